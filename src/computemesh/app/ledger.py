"""The mesh's embedded ledger: where it lives, who writes it, and the local faucet.

A home's ledger is ``<home>/ledger.db`` (``MeshHome.ledger_db``). A local mesh (`cmesh up`,
`cmesh demo`) creates it when it comes up, if it is missing:

- its author is the home's identity, the consumer that locks, releases and refunds;
- its one arbiter is that same identity: the local consumer judges results, so the fraud
  records it signs slash the stake of a provider caught lying on its own local network;
- its treasury is a key of the local network's own (``mesh/treasury/identity.json``), and
  its split the default of ``LedgerSettings`` (provider 80 / treasury 15 / creator 5 %);
- the node processes open the same file (its path in ``$CMESH_LEDGER``) to check each
  contract's escrow before they countersign; they only read it.

**The local faucet.** On a local mesh nobody has bought credits, so a consumer session
tops its own account up to ``LOCAL_FAUCET_CREDITS`` with a deposit whose id starts with
``local-faucet:``. This exists for the local development network only: a consumer on a
ledger of a mesh it did not bring up itself is never funded this way.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from computemesh.app.home import ENV_LEDGER, MeshHome
from computemesh.identity import Identity, load_or_create_identity
from computemesh.settlement import (
    LedgerSettings,
    Receipt,
    SettlementError,
    SqliteLedger,
    credits_to_units,
    format_credits,
)

log = logging.getLogger(__name__)

LOCAL_FAUCET_CREDITS = 1000
FAUCET_ID_PREFIX = "local-faucet"


def local_ledger_settings(home: MeshHome, author: Identity) -> LedgerSettings:
    """The local network's rules: its own treasury key, the default split, ``author`` (the
    home's consumer) its arbiter."""
    treasury = load_or_create_identity(home.treasury_home)
    return LedgerSettings(treasury=treasury.did, arbiters=frozenset({author.did}))


def create_local_ledger(home: MeshHome) -> Path:
    """The local mesh's ledger file, created (authored by the home's identity) if missing."""
    home.ensure()
    if not home.ledger_db.exists():
        author = load_or_create_identity(home.root)
        ledger = SqliteLedger.open(home.ledger_db, author, local_ledger_settings(home, author))
        log.info("created the local ledger %s (%s)", home.ledger_db, ledger.ledger_id[:16])
    return home.ledger_db


def open_ledger(path: Path, identity: Identity) -> SqliteLedger:
    """An existing ledger file; ``SettlementError`` (``no_ledger``) when there is none."""
    if not path.is_file():
        raise SettlementError(
            f"no ledger at {path}", code="no_ledger", hint="create one with `cmesh ledger init`"
        )
    return SqliteLedger.open(path, identity)


def node_ledger_path(explicit: Path | None = None) -> Path | None:
    """The ledger a node checks escrow on: ``explicit``, else ``$CMESH_LEDGER``, else none."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(ENV_LEDGER)
    return Path(from_env) if from_env else None


def consumer_ledger(home: MeshHome, identity: Identity) -> SqliteLedger | None:
    """The home's ledger for its consumer session, None when the home has none.

    When this home runs a local mesh, the consumer's account is topped up by the faucet.
    """
    if not home.ledger_db.is_file():
        return None
    ledger = open_ledger(home.ledger_db, identity)
    if home.read_state() is not None:
        fund_from_local_faucet(ledger, identity.did)
    return ledger


def fund_from_local_faucet(
    ledger: SqliteLedger, did: str, *, credits: int = LOCAL_FAUCET_CREDITS
) -> Receipt | None:
    """Top ``did``'s available balance up to ``credits`` (local network only); None when
    it holds that much already."""
    target = credits_to_units(credits)
    shortfall = target - ledger.balance(did).available
    if shortfall <= 0:
        return None
    deposit_id = f"{FAUCET_ID_PREFIX}:{uuid.uuid4().hex}"
    receipt = ledger.deposit(did, shortfall, deposit_id=deposit_id)
    log.info(
        "local network faucet: deposited %s credits to %s (%s); local mesh only",
        format_credits(shortfall),
        did,
        deposit_id,
    )
    return receipt
