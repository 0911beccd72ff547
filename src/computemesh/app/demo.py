"""`cmesh demo`: a local mesh doing real work end to end, then torn down.

Brings up NATS and N provider processes under ``<home>/demo``, submits M jobs cycled from
``examples/``, waits for every signed result, verifies each and checks its outputs against
``examples/expected.json``, then stops the mesh (also on Ctrl-C). Every contract is paid
through the local mesh's ledger (``app.ledger``): the report says what each provider earned,
what went to the treasury and what the consumer got back. With ``ledger="evm"`` the mesh
settles on a local anvil chain of its own (``app.localchain``) and each provider's balance
and the treasury's are read from the settlement contract.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from computemesh.app.consumer import consumer_session, failure_detection
from computemesh.app.home import MeshHome
from computemesh.app.ledger_config import Backend
from computemesh.app.localmesh import mesh_down, mesh_up
from computemesh.models.errors import MeshError
from computemesh.models.job import JobSpec
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import load_job_spec
from computemesh.settlement import UNITS_PER_CREDIT, Ledger, Receipt
from computemesh.store import JobRecord

EXPECTED_FILE = "expected.json"

Progress = Callable[[JobRecord], None]


def find_examples_dir(explicit: Path | None = None) -> Path:
    """``explicit``, else ./examples, else the examples beside this source tree."""
    candidates = [explicit] if explicit else [Path.cwd() / "examples"]
    candidates.append(Path(__file__).resolve().parents[3] / "examples")
    for candidate in candidates:
        if candidate is not None and (candidate / EXPECTED_FILE).is_file():
            return candidate
    raise MeshError(
        "cannot find the examples directory", hint="run from the repository or pass --examples"
    )


@dataclass(frozen=True)
class ExampleJob:
    spec_file: str
    spec: JobSpec
    expected: dict[str, str]


def load_examples(directory: Path) -> list[ExampleJob]:
    expected = json.loads((directory / EXPECTED_FILE).read_text())
    return [
        ExampleJob(spec_file=name, spec=load_job_spec(directory / name), expected=outputs)
        for name, outputs in sorted(expected.items())
    ]


def outputs_match(record: JobRecord, expected: dict[str, str]) -> bool:
    """True when every verified result has exactly the expected output hashes."""
    if not record.results:
        return False
    for document in record.results:
        produced = {item["path"]: item["sha256"] for item in document["body"]["outputs"]}
        if produced != expected:
            return False
    return True


def summarize_payments(
    receipts: list[Receipt], contract_ids: set[str], providers: list[str]
) -> dict[str, Any]:
    """What the ledger moved for ``contract_ids``, in units: per provider (jobs paid,
    earned), the treasury, model creators, and the consumer (locked, paid, refunded)."""
    earned: dict[str, dict[str, Any]] = {
        did: {"did": did, "jobs_paid": 0, "earned": 0} for did in providers
    }
    totals = {"locked": 0, "paid": 0, "refunded": 0, "treasury": 0, "creators": 0}
    for receipt in receipts:
        if receipt.body.get("contract_id") not in contract_ids:
            continue
        if receipt.op == "lock":
            totals["locked"] += receipt.amount
        totals["refunded"] += receipt.refund
        if receipt.op != "release":
            continue
        payees, shares = receipt.body["payees"], receipt.shares
        row = earned.setdefault(
            payees["provider"], {"did": payees["provider"], "jobs_paid": 0, "earned": 0}
        )
        row["jobs_paid"] += 1 if receipt.body.get("final") else 0
        row["earned"] += shares["provider"]
        totals["paid"] += receipt.amount
        totals["treasury"] += shares["treasury"]
        creator_share = "treasury" if payees["creator"] == payees["treasury"] else "creators"
        totals[creator_share] += shares["creator"]
    return {"units_per_credit": UNITS_PER_CREDIT, "providers": list(earned.values()), **totals}


@dataclass
class DemoReport:
    nodes: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    payments: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "submitted": len(self.rows),
            "completed": sum(row["status"] == "completed" for row in self.rows),
            "verified": sum(bool(row["verified"]) for row in self.rows),
            "correct": sum(bool(row["correct"]) for row in self.rows),
            "failed": sum(row["status"] != "completed" for row in self.rows),
            "wall_s": round(self.wall_s, 3),
            "jobs": self.rows,
            "payments": self.payments,
        }


async def _run_one(
    orchestrator: Orchestrator, example: ExampleJob, progress: Progress | None
) -> dict[str, Any]:
    record = await orchestrator.run(example.spec)
    if progress is not None:
        progress(record)
    provider = record.contracts[0]["terms"]["provider"] if record.contracts else None
    return {
        "job_id": record.job_id,
        "contract_ids": [contract["terms"]["contract_id"] for contract in record.contracts],
        "example": example.spec_file,
        "status": record.status,
        "verified": bool(record.verified),
        "correct": record.status == "completed" and outputs_match(record, example.expected),
        "provider": provider,
        "reason": record.reason,
        "seconds": round(record.updated_at - record.created_at, 3),
    }


async def run_jobs(
    orchestrator: Orchestrator,
    examples: list[ExampleJob],
    count: int,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    chosen = [examples[index % len(examples)] for index in range(count)]
    return list(
        await asyncio.gather(*(_run_one(orchestrator, example, progress) for example in chosen))
    )


def run_demo(
    home: MeshHome,
    *,
    nodes: int,
    jobs: int,
    examples_dir: Path | None = None,
    sandbox: bool = True,
    progress: Progress | None = None,
    on_mesh_up: Callable[[dict[str, Any]], None] | None = None,
    ledger: Backend | None = None,
    suspect_after_s: float | None = None,
    dead_after_s: float | None = None,
) -> DemoReport:
    """Bring up a local mesh of ``nodes``, run ``jobs`` examples on it, tear it down.

    ``suspect_after_s`` and ``dead_after_s`` bound the consumer's failure detector
    (``app.consumer.failure_detection``, checked before the mesh starts)."""
    settings = failure_detection(
        OrchestratorSettings(), suspect_after_s=suspect_after_s, dead_after_s=dead_after_s
    )
    examples = load_examples(find_examples_dir(examples_dir))
    demo_home = MeshHome(home.root / "demo")
    mesh_down(demo_home)
    state = mesh_up(demo_home, nodes=nodes, sandbox=sandbox, ledger=ledger)
    if on_mesh_up is not None:
        on_mesh_up(state)
    report = DemoReport(nodes=nodes)
    try:
        started = time.monotonic()
        report.rows, report.payments = asyncio.run(
            _demo_session(demo_home, state, examples, jobs, progress, settings)
        )
        report.wall_s = time.monotonic() - started
    finally:
        mesh_down(demo_home)
    return report


async def _demo_session(
    home: MeshHome,
    state: dict[str, Any],
    examples: list[ExampleJob],
    jobs: int,
    progress: Progress | None,
    settings: OrchestratorSettings,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    async with consumer_session(home, state["nats_url"], settings=settings) as orchestrator:
        await orchestrator.discover(window_s=0.5)
        rows = await run_jobs(orchestrator, examples, jobs, progress)
        if orchestrator.payments is None:
            return rows, None
        contract_ids = {cid for row in rows for cid in row["contract_ids"]}
        ledger = orchestrator.payments.ledger
        receipts = ledger.history(orchestrator.actor.did)
        providers = [node["did"] for node in state["nodes"]]
        payments = summarize_payments(receipts, contract_ids, providers)
        return rows, {**payments, **ledger_balances(ledger, providers, state)}


def ledger_balances(ledger: Ledger, providers: list[str], state: dict[str, Any]) -> dict[str, Any]:
    """Where the payments were made and the balances held there now: each provider's and
    the treasury's available units, read from the ledger (the contract, on a chain)."""
    chain = state.get("chain")
    where = f"on chain {chain['chain_id']}" if chain else "embedded ledger"
    return {
        "ledger": where,
        "balances": {did: ledger.balance(did).available for did in providers},
        "treasury_balance": ledger.balance(ledger.treasury).available,
    }
