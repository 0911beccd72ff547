"""Payments end to end on a real local mesh: nats-server, three sandboxed provider processes,
one ledger file shared by the consumer and the nodes.

Providers must be paid exactly the split of verified work: the expected amounts are
computed here from the signed usage in each result and the signed contract rate, with the
formula documented in ``settlement.pricing``, independently of the code under test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from computemesh.app.consumer import consumer_session
from computemesh.app.demo import load_examples
from computemesh.app.home import MeshHome
from computemesh.app.ledger import LOCAL_FAUCET_CREDITS
from computemesh.app.localmesh import mesh_down, mesh_up
from computemesh.identity import load_or_create_identity
from computemesh.models.job import JobSpec
from computemesh.orchestrator import OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.settlement import SqliteLedger
from computemesh.store import JobRecord

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = OrchestratorSettings(bid_window_s=1.0, placement_timeout_s=60)
BUSY = "import time\nend = time.process_time() + 1.5\nwhile time.process_time() < end: pass\n"


def spec(command: list[str]) -> JobSpec:
    data = {"name": "probe", "command": command, "timeout_s": 30}
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


def expected_charge(contract: dict[str, Any], usage: dict[str, Any]) -> int:
    """CPU time, peak memory x wall time and output bytes at the signed rates (process
    jobs count no fuel), rounded half up to units, capped by ``max_charge``."""

    def exact(value: float) -> Decimal:
        return Decimal(repr(value))

    cpu = exact(contract["price_per_cpu_hour"]) * exact(usage["cpu_s"]) / 3600
    memory = (
        exact(contract.get("price_per_gb_hour", 0.0))
        * Decimal(usage["max_rss_kb"] * 1024)
        / 10**9
        * exact(usage["wall_s"])
        / 3600
    )
    output = exact(contract.get("price_per_gb_out", 0.0)) * usage.get("bytes_out", 0) / 10**9
    units = (cpu + memory + output) * 1_000_000
    cap = (exact(contract["max_charge"]) * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(min(units.quantize(Decimal(1), rounding=ROUND_HALF_UP), cap))


def expected_payments(records: list[JobRecord]) -> tuple[Counter[str], int, int]:
    """Per provider, the treasury's total (with the creator share, no creator named), and
    what the consumer spent."""
    providers: Counter[str] = Counter()
    treasury = spent = 0
    for record in records:
        if record.status != "completed" or not record.verified:
            continue
        terms = {c["terms"]["contract_id"]: c["terms"] for c in record.contracts}
        for document in record.results:
            body = document["body"]
            contract = terms[body["contract_id"]]
            charge = expected_charge(contract, body["usage"])
            to_treasury, to_creator = charge * 1500 // 10_000, charge * 500 // 10_000
            providers[body["provider"]] += charge - to_treasury - to_creator
            treasury += to_treasury + to_creator
            spent += charge
    return providers, treasury, spent


async def run_paid_jobs(home: MeshHome, nats_url: str) -> list[JobRecord]:
    examples = [example.spec for example in load_examples(EXAMPLES)]
    failing = spec(["python3", "-c", "import sys; sys.exit(3)"])
    busy = spec(["python3", "-c", BUSY])
    async with consumer_session(home, nats_url, settings=SETTINGS) as orchestrator:
        assert len(await orchestrator.discover(window_s=0.5)) == 3
        records = [await orchestrator.run(job) for job in [*examples, busy, failing]]
        duplicate = records[0].results[0]
        orchestrator.accept_result(records[0].job_id, duplicate)  # a retried push
    return records


async def test_providers_are_paid_exactly_the_split_of_verified_work(tmp_path: Path) -> None:
    home = MeshHome(tmp_path / "home")
    state = mesh_up(home, nodes=3)
    try:
        records = await run_paid_jobs(home, state["nats_url"])
    finally:
        mesh_down(home)
    statuses = [record.status for record in records]
    assert statuses == ["completed"] * (len(records) - 1) + ["failed"]

    consumer = load_or_create_identity(home.root)
    ledger = SqliteLedger.open(home.ledger_db, consumer)
    providers, treasury, spent = expected_payments(records)
    assert sum(providers.values()) > 0  # the busy job alone earns tens of units
    for node in state["nodes"]:
        assert ledger.balance(node["did"]).available == providers[node["did"]]
    assert ledger.balance(ledger.treasury).available == treasury

    faucet = LOCAL_FAUCET_CREDITS * 1_000_000
    mine = ledger.balance(consumer.did)
    assert (mine.available, mine.escrowed) == (faucet - spent, 0)

    report = ledger.verify()
    assert report.ok, report.problems
    held = mine.available + treasury + sum(providers.values())
    assert report.supply == faucet == held  # nothing created or lost

    failed = records[-1]
    (contract,) = failed.contracts
    escrow = ledger.escrow(contract["terms"]["contract_id"])
    assert escrow.closed and escrow.released == 0 and escrow.refunded == escrow.locked

    releases = [r for r in ledger.history(consumer.did) if r.op == "release"]
    assert len(releases) == len(records) - 1  # the duplicate paid nothing more

    verified = cli_verify(home)
    assert verified["ok"] is True and verified["problems"] == []


def cli_verify(home: MeshHome) -> dict[str, Any]:
    command = [sys.executable, "-m", "computemesh", "--home", str(home.root)]
    completed = subprocess.run(
        [*command, "ledger", "verify", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result
