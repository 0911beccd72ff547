"""Payments end to end on a local mesh that settles on a chain: `cmesh up --ledger evm`.

A real anvil on loopback, nats-server and three provider processes under bubblewrap; the
consumer locks, releases and refunds through the settlement contract, and the nodes check
each contract's escrow on the chain before they countersign. The expected amounts are the
ones ``test_mesh_payments`` computes from the signed usage and rates; the balances are
read from the contract itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from web3 import Web3
from web3.contract import Contract

from computemesh.actor import Actor
from computemesh.app.home import MeshHome
from computemesh.app.ledger import LOCAL_FAUCET_CREDITS, open_home_ledger
from computemesh.app.ledger_config import load_ledger_config
from computemesh.app.localmesh import mesh_down, mesh_up
from computemesh.identity import load_or_create_identity
from computemesh.orchestrator import Orchestrator
from computemesh.settlement.anvil import find_anvil
from computemesh.settlement.bindings import account_from_identity
from computemesh.settlement.chain import compiled
from computemesh.store import JobRepository, open_database, sqlite_url
from computemesh.transport import NatsTransport, is_process_alive
from tests.integration.test_cli_mesh import as_json, cmesh
from tests.integration.test_mesh_payments import SETTINGS, expected_payments, run_paid_jobs, spec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(900),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(find_anvil() is None, reason="anvil is not installed (make setup)"),
]


def settlement_contract(home: MeshHome) -> Contract:
    config = load_ledger_config(home).evm
    assert config is not None
    w3 = Web3(Web3.HTTPProvider(config.chain.rpc_url))
    address = Web3.to_checksum_address(config.deployment.settlement)
    return w3.eth.contract(address=address, abi=compiled("Settlement").abi)


def address_of_home(root: Path) -> str:
    return str(account_from_identity(load_or_create_identity(root)).address)


async def run_unpaid_job(home: MeshHome, nats_url: str, tmp_path: Path) -> str:
    """A job sent by the home's (funded, bound) consumer with no ledger: nothing is locked
    on chain for its contracts. Returns the job's reason."""
    transport = await NatsTransport.connect(nats_url, name="unpaid-consumer")
    orchestrator = Orchestrator(
        actor=Actor(identity=load_or_create_identity(home.root), transport=transport),
        jobs=JobRepository(open_database(sqlite_url(tmp_path / "unpaid.db"))),
        settings=SETTINGS,
        ledger=None,
    )
    try:
        await orchestrator.start()
        assert len(await orchestrator.discover(window_s=0.5)) == 3
        record = await orchestrator.run(spec(["python3", "-c", "print('unpaid')"]))
    finally:
        await orchestrator.stop()
        await transport.close()
    assert record.status != "completed" and not record.contracts, record
    return record.reason or ""


async def test_jobs_on_a_local_chain_are_paid_exactly_the_split_on_chain(tmp_path: Path) -> None:
    home = MeshHome(tmp_path / "home")
    state = mesh_up(home, nodes=3, ledger="evm")
    chain = state["chain"]
    try:
        assert chain["rpc_url"].startswith("http://127.0.0.1:")
        assert (home.read_state() or {}).get("chain") == chain
        records = await run_paid_jobs(home, state["nats_url"])
        refusal = await run_unpaid_job(home, state["nats_url"], tmp_path)
        settlement = settlement_contract(home)
        consumer = load_or_create_identity(home.root)
        ledger = open_home_ledger(home, consumer)
        providers, treasury, spent = expected_payments(records)
        balances = {
            node["did"]: settlement.functions.balances(address_of_home(Path(node["home"]))).call()
            for node in state["nodes"]
        }
        treasury_address = settlement.functions.treasury().call()
        consumer_address = address_of_home(home.root)
        on_chain = (
            settlement.functions.balances(treasury_address).call(),
            settlement.functions.balances(consumer_address).call(),
            settlement.functions.escrowed(consumer_address).call(),
        )
        failed_contract = records[-1].contracts[0]["terms"]["contract_id"]
        failed_escrow = ledger.escrow(failed_contract)
        releases = [r for r in ledger.history(consumer.did) if r.op == "release"]
        checked = ledger.check_receipt(releases[0].document)
    finally:
        mesh_down(home)

    assert [record.status for record in records] == ["completed"] * (len(records) - 1) + ["failed"]
    assert sum(providers.values()) > 0  # the busy job alone earns tens of units
    assert balances == {node["did"]: providers[node["did"]] for node in state["nodes"]}
    faucet = LOCAL_FAUCET_CREDITS * 1_000_000
    assert on_chain == (treasury, faucet - spent, 0)
    assert failed_escrow.closed and failed_escrow.released == 0
    assert failed_escrow.refunded == failed_escrow.locked
    assert len(releases) == len(records) - 1  # the retried push paid nothing more
    assert checked.op_id == releases[0].op_id

    assert "no escrow is locked" in refusal, refusal
    assert not is_process_alive(int(chain["pid"]))
    assert not home.ledger_config.exists() and not home.ledger_receipts.exists()


def test_cli_demo_on_a_local_chain_reads_its_payments_from_the_contract(tmp_path: Path) -> None:
    summary = as_json(cmesh(tmp_path, "demo", "--ledger", "evm", "-n", "2", "-j", "4", "--json"))
    assert (summary["submitted"], summary["verified"], summary["correct"]) == (4, 4, 4)
    payments = summary["payments"]
    assert payments["ledger"] == "on chain 31337"
    earned = {row["did"]: row["earned"] for row in payments["providers"]}
    assert sum(earned.values()) > 0
    assert payments["balances"] == earned  # a fresh chain: each balance is what was earned
    assert payments["treasury_balance"] == payments["treasury"] + payments["creators"]
    demo_home = MeshHome(tmp_path / "demo")
    assert demo_home.read_state() is None and not demo_home.ledger_config.exists()
