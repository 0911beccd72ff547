"""The ledger a home settles on: which backend, where it lives, who writes it, the faucet.

``open_home_ledger`` is the one place a backend is picked: the EVM backend when the home's
``ledger.json`` names it (``app.ledger_config``), else the embedded ledger
``<home>/ledger.db`` (``MeshHome.ledger_db``). A local mesh (`cmesh up`, `cmesh demo`) on
the embedded backend creates it when it comes up, if it is missing:

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
ledger of a mesh it did not bring up itself is never funded this way, nor is any account
on a chain.

**On a chain.** The home's chain account is derived from its identity
(``account_from_identity``) and is its own operator: deposits pull its tokens. A local
mesh on the EVM backend passes its nodes the path of the home's ``ledger.json`` in
``$CMESH_LEDGER``: each node opens a read-only client of the same deployment
(``open_node_ledger``, no gas needed) and checks escrow on the chain before it
countersigns. A consumer can lock escrow only for providers whose accounts are bound
(`cmesh up --ledger evm` binds its nodes' accounts; elsewhere each provider runs `cmesh
ledger init --backend evm` in its own home).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from computemesh.app.home import ENV_LEDGER, MeshHome
from computemesh.app.ledger_config import (
    EvmLedgerConfig,
    bad_config,
    load_ledger_config,
    load_ledger_config_file,
)
from computemesh.identity import Identity, load_or_create_identity
from computemesh.settlement import (
    Ledger,
    LedgerSettings,
    Receipt,
    SettlementError,
    SqliteLedger,
    credits_to_units,
    format_credits,
)
from computemesh.settlement.bindings import account_from_identity, bind_account

if TYPE_CHECKING:
    from computemesh.settlement.evm import EvmLedger

log = logging.getLogger(__name__)

LOCAL_FAUCET_CREDITS = 1000
SQLITE_HEADER = b"SQLite format 3\x00"
FAUCET_ID_PREFIX = "local-faucet"


def local_ledger_settings(home: MeshHome, author: Identity) -> LedgerSettings:
    """The local network's rules: its own treasury key, the default split, ``author`` (the
    home's consumer) its arbiter."""
    treasury = load_or_create_identity(home.treasury_home)
    return LedgerSettings(treasury=treasury.did, arbiters=frozenset({author.did}))


def create_local_ledger(home: MeshHome) -> Path:
    """What a local mesh's nodes check escrow on: the home's ``ledger.json`` when it
    settles on a chain, else the embedded ledger file, created (authored by the home's
    identity) if missing."""
    if load_ledger_config(home).evm is not None:
        return home.ledger_config
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


def open_home_ledger(home: MeshHome, identity: Identity, *, path: Path | None = None) -> Ledger:
    """The ledger ``home`` settles on, signing as ``identity``: the embedded ledger at
    ``path`` when given, else the backend ``<home>/ledger.json`` names, else the embedded
    ``<home>/ledger.db``.

    Raises ``SettlementError``: ``no_ledger`` (no embedded ledger file),
    ``bad_ledger_config``, ``chain_unreachable`` or ``wrong_chain`` (the configured chain).
    """
    if path is not None:
        return open_ledger(path, identity)
    config = load_ledger_config(home)
    if config.evm is not None:
        return open_evm_ledger(config.evm, identity, receipts=home.ledger_receipts)
    return open_ledger(home.ledger_db, identity)


def open_evm_ledger(
    config: EvmLedgerConfig, identity: Identity, *, receipts: Path | None
) -> EvmLedger:
    """A client of ``config``'s deployment acting for ``identity``'s derived account, its
    receipts kept in the SQLite file ``receipts`` (in memory when None: a client that only
    reads issues none); ``bad_ledger_config`` when no settlement contract is deployed at
    the configured address."""
    from computemesh.settlement.chain import connect
    from computemesh.settlement.evm import EvmLedger
    from computemesh.settlement.receipt_store import ReceiptStore
    from computemesh.settlement.transactions import ChainClient

    w3 = connect(config.chain)
    if not w3.eth.get_code(w3.to_checksum_address(config.deployment.settlement)):
        raise bad_config(
            f"no contract at {config.deployment.settlement} on chain {config.chain.chain_id}",
            hint="point the config at a deployment of this chain",
        )
    account = account_from_identity(identity)
    client = ChainClient(w3, config.deployment, [account], operator=account)
    store = ReceiptStore(f"sqlite:///{receipts}") if receipts is not None else ReceiptStore()
    return EvmLedger(client, author=identity, settings=config.settings, store=store)


def bind_own_account(ledger: EvmLedger, identity: Identity) -> Receipt:
    """Bind ``identity``'s DID to its derived chain account (idempotent; costs gas once)."""
    return ledger.bind_account(bind_account(identity, account_from_identity(identity)))


def node_ledger_path(explicit: Path | None = None, *, home: Path | None = None) -> Path | None:
    """The ledger a node checks escrow on: ``explicit``, else ``$CMESH_LEDGER``, else the
    chain its own home settles on (``<home>/ledger.json``, from `cmesh ledger init
    --backend evm` there), else none."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(ENV_LEDGER)
    if from_env:
        return Path(from_env)
    own = MeshHome(home).ledger_config if home is not None else None
    return own if own is not None and own.is_file() else None


def open_node_ledger(path: Path, identity: Identity) -> Ledger:
    """The ledger a node checks escrow on: the embedded ledger when ``path`` is an SQLite
    file, else the chain a ledger config (``ledger.json``) at ``path`` names, read through
    a client of ``identity``'s account that keeps no receipts (reads cost no gas).

    Raises ``SettlementError``: ``no_ledger`` (no such file, or a config naming the
    embedded backend), ``bad_ledger_config``, ``chain_unreachable``, ``wrong_chain``.
    """
    if not path.is_file() or _is_sqlite_file(path):
        return open_ledger(path, identity)
    config = load_ledger_config_file(path)
    if config.evm is None:
        raise SettlementError(f"{path} names no chain and is no ledger file", code="no_ledger")
    return open_evm_ledger(config.evm, identity, receipts=None)


def _is_sqlite_file(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER


def consumer_ledger(home: MeshHome, identity: Identity) -> Ledger | None:
    """The home's ledger for its consumer session (``open_home_ledger``), None when the
    home has none.

    When this home runs a local mesh on the embedded ledger, the consumer's account is
    topped up by the faucet.
    """
    if load_ledger_config(home).evm is not None:
        return open_home_ledger(home, identity)
    if not home.ledger_db.is_file():
        return None
    ledger = open_ledger(home.ledger_db, identity)
    if home.read_state() is not None:
        fund_from_local_faucet(ledger, identity.did)
    return ledger


def fund_from_local_faucet(
    ledger: Ledger, did: str, *, credits: int = LOCAL_FAUCET_CREDITS
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
