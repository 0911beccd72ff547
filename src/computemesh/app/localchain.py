"""A local mesh that settles on a chain of its own: anvil on loopback (`cmesh up --ledger evm`).

``start_local_chain`` starts anvil detached (its pid recorded in the mesh state, so `cmesh
down` stops it by pid; log in ``mesh/logs/anvil.log``), then:

1. pays gas from anvil's dev account to the home's account, which deploys the settlement
   contract and a test token (``app.ledger_deploy``); the treasury is the account of the
   local network's treasury key, the arbiter the home's (as on the embedded local ledger,
   the consumer judges results and slashes on its own local network);
2. writes ``<home>/ledger.json`` naming the chain, owned by the mesh: `cmesh down` removes
   it with ``ledger-receipts.db``, since the chain they describe is gone;
3. binds the home's and the treasury's accounts, mints ``LOCAL_FAUCET_CREDITS`` test
   tokens to the home's account and deposits them (the local network's faucet);
4. ``bind_node_accounts``: each node's account (derived from the key in its home) gets gas
   and is bound to its DID, so the consumer can lock escrow naming it.

The nodes read ``ledger.json`` (its path in ``$CMESH_LEDGER``) and check escrow on the
chain before they countersign.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from computemesh.app.home import MeshHome
from computemesh.app.ledger import (
    FAUCET_ID_PREFIX,
    LOCAL_FAUCET_CREDITS,
    bind_own_account,
    open_evm_ledger,
)
from computemesh.app.ledger_config import EvmLedgerConfig, load_ledger_config, save_ledger_config
from computemesh.app.ledger_deploy import deploy_ledger, mint_test_tokens
from computemesh.identity import Identity, load_or_create_identity
from computemesh.settlement import LedgerSettings, SettlementError, credits_to_units
from computemesh.settlement.bindings import account_from_identity
from computemesh.transport import stop_process

log = logging.getLogger(__name__)

# Native coin (wei) each local account is given for gas: plenty for a local network.
GAS_MONEY_WEI = 10**20


def check_no_ledger_config(home: MeshHome) -> None:
    """Refuse (``ledger_exists``) a home that has chosen its ledger, or holds receipts of
    a chain it no longer names: a fresh local chain would be confused with them."""
    for path in (home.ledger_config, home.ledger_receipts):
        if path.exists():
            raise SettlementError(
                f"{path} exists: this home has settled on a chain before",
                code="ledger_exists",
                hint="`cmesh up` without --ledger settles on the chain ledger.json names;"
                " or remove the file, or use another home",
            )


def start_local_chain(home: MeshHome) -> dict[str, Any]:
    """Start anvil for ``home``'s mesh and set up its ledger (module docstring, 1 to 3).

    Returns the record to keep under ``state["chain"]``; on failure anvil is stopped and
    nothing is left behind.
    """
    from computemesh.settlement.anvil import start_anvil

    check_no_ledger_config(home)
    log_file = home.logs_dir / "anvil.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    node = start_anvil(log_file=log_file, detached=True)
    record = {"pid": node.pid, "rpc_url": node.url, "chain_id": node.chain_id, "log": str(log_file)}
    try:
        setup_local_ledger(home, node.url)
    except BaseException:
        stop_local_chain(home, record)
        raise
    record["config"] = str(home.ledger_config)
    return record


def setup_local_ledger(home: MeshHome, rpc_url: str) -> EvmLedgerConfig:
    """Deploy, write ``ledger.json``, bind and fund the consumer (steps 1 to 3)."""
    from computemesh.settlement.anvil import fund_from_dev_account
    from computemesh.settlement.chain import chain_settings

    chain = chain_settings("local", rpc_url)
    consumer = load_or_create_identity(home.root)
    treasury = load_or_create_identity(home.treasury_home)
    for identity in (consumer, treasury):
        fund_from_dev_account(rpc_url, account_from_identity(identity).address, GAS_MONEY_WEI)
    deployment = deploy_ledger(chain, consumer, treasury=account_from_identity(treasury).address)
    config = EvmLedgerConfig(
        chain=chain,
        deployment=deployment,
        settings=LedgerSettings(treasury=treasury.did, arbiters=frozenset({consumer.did})),
    )
    save_ledger_config(home, config)
    bind_own_account(open_evm_ledger(config, treasury, receipts=None), treasury)
    ledger = open_evm_ledger(config, consumer, receipts=home.ledger_receipts)
    bind_own_account(ledger, consumer)
    faucet = credits_to_units(LOCAL_FAUCET_CREDITS)
    mint_test_tokens(chain, deployment, consumer, to=deployment_account(consumer), amount=faucet)
    ledger.deposit(consumer.did, faucet, deposit_id=f"{FAUCET_ID_PREFIX}:{uuid.uuid4().hex}")
    log.info("local chain %s: settlement %s", rpc_url, deployment.settlement)
    return config


def deployment_account(identity: Identity) -> str:
    return str(account_from_identity(identity).address)


def bind_node_accounts(home: MeshHome, node_homes: list[Path]) -> None:
    """Give each node's account gas and bind it to the node's DID (step 4)."""
    from computemesh.settlement.anvil import fund_from_dev_account

    config = load_ledger_config(home).evm
    if config is None:
        raise SettlementError(f"{home.root} settles on no chain", code="no_ledger")
    for node_home in node_homes:
        node_home.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = load_or_create_identity(node_home)
        fund_from_dev_account(config.chain.rpc_url, deployment_account(identity), GAS_MONEY_WEI)
        bind_own_account(open_evm_ledger(config, identity, receipts=None), identity)


def stop_local_chain(home: MeshHome, record: dict[str, Any]) -> bool:
    """Stop the recorded anvil by pid and remove the ledger files of its chain; True when
    it was running."""
    stopped = stop_process(int(record["pid"]))
    home.ledger_config.unlink(missing_ok=True)
    home.ledger_receipts.unlink(missing_ok=True)
    return stopped
