"""Chaos run: jobs on a local mesh while providers, the orchestrator and a hub are killed.

Starts a 3-hub NATS cluster and several provider processes, and a consumer process (the
orchestrator) that submits short sandboxed jobs. At seeded random moments it SIGKILLs a
provider (restarted after a pause), the consumer (restarted: it resumes from its store) or
one NATS server (restarted after a pause). The mesh has its ledger like any local mesh: the
consumer locks escrow per contract and pays each verified result through it.

At the end it reads the consumer's store and the ledger and prints jobs submitted,
completed, lost (submitted but not completed), duplicated (a result accepted twice, or a job
submitted twice), escrow paid twice (``double_paid``: contracts released more than once or
paid more than the price of their one accepted result), escrow still locked, whether the
ledger's journal verifies, and the time to recover (the longest time from a kill to the
next job completed).

    python bench/chaos.py [--jobs 300] [--nodes 4] [--seed 7] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from computemesh.app.consumer import consumer_session, open_jobs
from computemesh.app.home import MeshHome
from computemesh.app.ledger import open_ledger
from computemesh.app.localmesh import mesh_down, mesh_up, restart_hub, restart_node
from computemesh.identity import load_or_create_identity
from computemesh.models.job import JobSpec
from computemesh.models.market import ContractTerms, JobResult
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.settlement import Ledger, Receipt
from computemesh.settlement.pricing import charge_for_usage
from computemesh.store import JobRecord
from computemesh.transport import is_process_alive, spawn_detached, stop_process

SETTINGS = OrchestratorSettings(bid_window_s=0.5, placement_timeout_s=60, fetch_interval_s=2.0)
KINDS = ("provider", "orchestrator", "hub")
RESTART_PAUSE_S = (0.5, 2.0)
TABLE = (
    "submitted",
    "completed",
    "lost",
    "duplicated",
    "double_paid",
    "underpaid",
    "escrows_locked",
    "escrow_locked_after",
    "escrows_open",
    "ledger_ok",
    "recovery_s",
)


def chaos_spec(index: int) -> JobSpec:
    data = {
        "name": f"chaos-{index}",
        "command": ["sh", "-c", f"sleep 0.{index % 10}; echo job {index}"],
        "resources": {"cpu": 0.1, "memory_mb": 64},
        "timeout_s": 30,
    }
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


# The consumer process ---------------------------------------------------------------------


async def run_one(orchestrator: Orchestrator, index: int, gate: asyncio.Semaphore) -> None:
    async with gate:
        job_id = orchestrator.submit(chaos_spec(index))
        if await orchestrator.place(job_id):
            await orchestrator.recovery.follow(job_id)


async def consume(home: MeshHome, url: str, total: int, concurrency: int) -> None:
    """Submit the jobs not yet in the store and see every job to its end, resumed ones too."""
    async with consumer_session(home, url, settings=SETTINGS) as orchestrator:
        await orchestrator.discover(window_s=0.5)
        already = len(orchestrator.jobs.recent(limit=total * 2))
        gate = asyncio.Semaphore(concurrency)
        await asyncio.gather(
            orchestrator.recovery.wait(),
            *(run_one(orchestrator, index, gate) for index in range(already, total)),
        )


def consumer_process(home: MeshHome, total: int, concurrency: int) -> subprocess.Popen[bytes]:
    """The consumer as its own process (``--consume``), logging to ``consumer.log``."""
    command = [sys.executable, __file__, "--consume", str(home.root), str(total), str(concurrency)]
    log = home.logs_dir / "consumer.log"
    return spawn_detached(command, log, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def start_consumer(home: MeshHome, total: int, concurrency: int) -> int:
    return consumer_process(home, total, concurrency).pid


# The chaos --------------------------------------------------------------------------------


@dataclass
class ChaosLog:
    kills: list[tuple[str, str, float]] = field(default_factory=list)

    def note(self, kind: str, name: str) -> None:
        self.kills.append((kind, name, time.time()))
        print(f"  kill {kind} {name}", file=sys.stderr)


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    stop_process(pid, timeout=5.0)  # reaps it


def strike(home: MeshHome, kind: str, rng: random.Random, log: ChaosLog, consumer: int) -> int:
    """Kill one process of ``kind`` and bring it back; returns the consumer's pid."""
    state = home.read_state() or {}
    if kind == "orchestrator":
        log.note(kind, f"pid {consumer}")
        kill(consumer)
        return -1
    pool = state["nodes"] if kind == "provider" else state["hubs"]
    victim = rng.choice(pool)
    log.note(kind, victim["name"])
    kill(int(victim["pid"]))
    time.sleep(rng.uniform(*RESTART_PAUSE_S))
    if kind == "provider":
        restart_node(home, victim["name"])
    else:
        restart_hub(home, victim["name"])
    return consumer


def run_chaos(home: MeshHome, args: argparse.Namespace, rng: random.Random, log: ChaosLog) -> bool:
    """Drive the consumer to the end while striking; True when it finished by itself."""
    consumer = start_consumer(home, args.jobs, args.concurrency)
    deadline = time.monotonic() + args.deadline
    next_strike = time.monotonic() + rng.uniform(1.0, args.interval)
    strikes = list(args.kinds) if args.each_once else []
    while time.monotonic() < deadline:
        if consumer < 0:
            consumer = start_consumer(home, args.jobs, args.concurrency)
        if not is_process_alive(consumer):
            if stop_process(consumer) is False and _finished(home, args.jobs):
                return True
            consumer = -1
            continue
        if time.monotonic() >= next_strike and (strikes or not args.each_once):
            kind = strikes.pop(0) if args.each_once else rng.choice(args.kinds)
            consumer = strike(home, kind, rng, log, consumer)
            next_strike = time.monotonic() + rng.uniform(1.0, args.interval)
        time.sleep(0.1)
    if consumer > 0:
        kill(consumer)
    return False


def _finished(home: MeshHome, total: int) -> bool:
    records = open_jobs(home).recent(limit=total * 2)
    return len(records) >= total and all(record.is_final for record in records)


# The tally --------------------------------------------------------------------------------


def tally(home: MeshHome, total: int, log: ChaosLog) -> dict[str, Any]:
    records = open_jobs(home).recent(limit=total * 2)
    names = Counter(record.name for record in records)
    completed = [r for r in records if r.status == "completed"]
    duplicated = sum(count - 1 for count in names.values()) + sum(
        1 for record in records if _accepted_twice(record)
    )
    return {
        "submitted": len(records),
        "completed": len(completed),
        "lost": len(records) - len(completed),
        "duplicated": duplicated,
        **audit_ledger(home, records),
        "recovery_s": round(_recovery_s(completed, log), 2),
        "kills": Counter(kind for kind, _, _ in log.kills),
        "not_completed": {
            r.name: f"{r.status} verified={r.verified}: {r.reason}"[:200]
            for r in records
            if r not in completed
        },
    }


def _accepted_twice(record: JobRecord) -> bool:
    contract_ids = [document["body"]["contract_id"] for document in record.results]
    replicas = int(record.spec.get("replicas", 1))
    return len(contract_ids) != len(set(contract_ids)) or len(contract_ids) > replicas


def _recovery_s(completed: list[JobRecord], log: ChaosLog) -> float:
    """The longest wait, over all kills, until some job completed after it."""
    finishes = sorted(record.updated_at for record in completed)
    waits = []
    for _, _, at in log.kills:
        later = [finish for finish in finishes if finish > at]
        if later:
            waits.append(later[0] - at)
    return max(waits, default=0.0)


# The ledger audit -------------------------------------------------------------------------


@dataclass
class ContractPaid:
    """What the ledger moved for one contract: escrow locked, releases, units paid."""

    job_id: str | None = None
    releases: int = 0
    paid: int = 0

    @property
    def locked(self) -> bool:
        return self.job_id is not None


def audit_ledger(home: MeshHome, records: list[JobRecord]) -> dict[str, Any]:
    """Check every payment of the consumer's against the jobs it accepted.

    Each contract is paid at most once, at most the price of its one accepted result
    (nothing for a contract without one: a failed, superseded or orphaned contract; chaos
    jobs keep no checkpoints, so no progress is paid on the way). ``double_paid`` counts
    the contracts that were not; ``underpaid`` the accepted results paid less than their
    price; ``escrow_locked_after`` the units left in escrow, and ``escrows_open`` the
    contracts holding them, once every job is final.
    """
    consumer = load_or_create_identity(home.root)
    ledger = open_ledger(home.ledger_db, consumer)
    paid = contracts_paid(ledger.history(consumer.did))
    prices = accepted_prices(records)
    open_escrows = [cid for cid, seen in paid.items() if seen.locked and _is_open(ledger, cid)]
    report = ledger.verify()
    return {
        "double_paid": sum(
            1 for cid, seen in paid.items() if seen.releases > 1 or seen.paid > prices.get(cid, 0)
        ),
        "underpaid": sum(1 for cid, price in prices.items() if _paid(paid, cid) < price),
        "escrows_locked": sum(1 for seen in paid.values() if seen.locked),
        "escrow_locked_after": ledger.balance(consumer.did).escrowed,
        "escrows_open": len(open_escrows),
        "open_escrows": {cid: _why_open(records, cid, paid[cid].job_id) for cid in open_escrows},
        "ledger_ok": report.ok,
        "ledger_entries": report.entries,
        "ledger_problems": report.problems[:10],
    }


def contracts_paid(receipts: list[Receipt]) -> dict[str, ContractPaid]:
    """Locks and releases per contract id, from the consumer's receipts."""
    paid: dict[str, ContractPaid] = {}
    for receipt in receipts:
        contract_id = receipt.body.get("contract_id")
        if not isinstance(contract_id, str):
            continue
        seen = paid.setdefault(contract_id, ContractPaid())
        if receipt.op == "lock":
            seen.job_id = str(receipt.body["job_id"])
        elif receipt.op == "release":
            seen.releases += 1
            seen.paid += receipt.amount
    return paid


def accepted_prices(records: list[JobRecord]) -> dict[str, int]:
    """The price of each accepted result of a completed, verified job, by contract id."""
    prices: dict[str, int] = {}
    for record in records:
        if record.status != "completed" or not record.verified:
            continue
        terms = {c["terms"]["contract_id"]: c["terms"] for c in record.contracts}
        for document in record.results:
            result = JobResult.model_validate(document["body"])
            contract = ContractTerms.model_validate(terms[result.contract_id])
            prices[result.contract_id] = charge_for_usage(result.usage, contract)
    return prices


def _paid(paid: dict[str, ContractPaid], contract_id: str) -> int:
    seen = paid.get(contract_id)
    return seen.paid if seen is not None else 0


def _why_open(records: list[JobRecord], contract_id: str, job_id: str | None) -> str:
    """The job an open escrow was locked for, and whether the job holds its contract."""
    record = next((r for r in records if r.job_id == job_id), None)
    if record is None:
        return f"job {job_id} is not in the store"
    held = any(c["terms"]["contract_id"] == contract_id for c in record.contracts)
    return f"{record.name} ({record.status}), contract {'held' if held else 'not held'}"


def _is_open(ledger: Ledger, contract_id: str) -> bool:
    return not ledger.escrow(contract_id).closed


# Entry point ------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--hubs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--interval", type=float, default=8.0, help="most seconds between kills")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds before giving up")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--each-once", action="store_true", help="kill each kind once, in order")
    parser.add_argument("--quick", action="store_true", help="50 jobs, a kill every 1 to 2.5 s")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--consume", nargs=3, metavar=("HOME", "TOTAL", "CONCURRENCY"))
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.interval, args.deadline = 50, 2.5, 300.0
    return args


def consumer_main(home_dir: str, total: str, concurrency: str) -> None:
    home = MeshHome(Path(home_dir))
    asyncio.run(consume(home, home.nats_url(), int(total), int(concurrency)))


def print_table(result: dict[str, Any]) -> None:
    print(f"{'metric':<20}{'value':>10}")
    for key in TABLE:
        print(f"{key:<20}{result[key]!s:>10}")
    print("kills: " + ", ".join(f"{kind} {count}" for kind, count in result["kills"].items()))
    for contract_id, why in result["open_escrows"].items():
        print(f"  escrow open: {contract_id}: {why}")
    for problem in result["ledger_problems"]:
        print(f"  ledger: {problem}")
    for name, why in result["not_completed"].items():
        print(f"  not completed: {name}: {why}")


def main() -> None:
    args = parse_args()
    if args.consume:
        consumer_main(*args.consume)
        return
    rng = random.Random(args.seed)
    log = ChaosLog()
    with tempfile.TemporaryDirectory(prefix="cmesh-chaos-") as tmp:
        home = MeshHome(Path(tmp))
        mesh_up(home, nodes=args.nodes, hubs=args.hubs)
        started = time.monotonic()
        try:
            finished = run_chaos(home, args, rng, log)
            result = tally(home, args.jobs, log)
        finally:
            mesh_down(home)
    result.update(
        seed=args.seed,
        nodes=args.nodes,
        hubs=args.hubs,
        finished=finished,
        wall_s=round(time.monotonic() - started, 1),
    )
    print_table(result)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
