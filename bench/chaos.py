"""Chaos run: jobs on a local mesh while providers, the orchestrator and a hub are killed.

Starts a 3-hub NATS cluster and several provider processes, and a consumer process (the
orchestrator) that submits short sandboxed jobs; every fourth job counts in steps, keeping
its step in a checkpoint, so a job moved off a killed provider resumes from its checkpoint
and that provider is paid for the verified progress. At seeded random moments it SIGKILLs
a provider (restarted after a pause), the consumer (restarted: it resumes from its store)
or one NATS server (restarted after a pause). The mesh has its ledger like any local mesh:
the consumer locks escrow per contract and pays each verified result through it.

At the end it reads the consumer's store and the ledger and prints jobs submitted,
completed, lost (submitted but not completed), duplicated (a result accepted twice, or a job
submitted twice), escrow paid twice (``double_paid``: contracts released more than once or
paid more than the price of their one accepted result, or of the checkpoint a verified
result resumed from), escrow still locked, whether the ledger's journal verifies, and the
time to recover from each kill (``recovery_s`` is the longest; ``recovery_by_kind`` the
longest per kind of kill; see ``kill_recovery``).

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
from computemesh.identity import document_digest, load_or_create_identity
from computemesh.models.job import JobSpec
from computemesh.models.market import Checkpoint, ContractTerms, JobResult
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.outcome import stored_outcome
from computemesh.orchestrator.progress import CheckpointByDigest, verified_progress
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.settlement import Ledger, Receipt
from computemesh.settlement.pricing import charge_for_usage
from computemesh.store import JobRecord, JobRepository
from computemesh.transport import is_process_alive, spawn_detached, stop_process

SETTINGS = OrchestratorSettings(bid_window_s=0.5, placement_timeout_s=60, fetch_interval_s=2.0)
KINDS = ("provider", "orchestrator", "hub")
RESTART_PAUSE_S = (0.5, 2.0)
CHECKPOINT_EVERY = 4
"""Every this many jobs, one counts in steps and keeps checkpoints."""
COUNTER_STEPS, COUNTER_SPIN, COUNTER_PAUSE_S, CHECKPOINT_INTERVAL_S = 12, 40_000, 0.15, 0.5
COUNTER = (
    'f="$CMESH_CHECKPOINT_DIR/step"; s=$(cat "$f" 2>/dev/null || echo 0); '
    '[ "$s" -gt 0 ] && echo "resumed at step $s" >&2; '
    'while [ "$s" -lt {steps} ]; do i=0; while [ "$i" -lt {spin} ]; do i=$((i+1)); done; '
    'sleep {pause}; s=$((s+1)); echo "$s" > "$f.new" && mv "$f.new" "$f"; done; '
    "echo job {index}"
)
"""A job that burns a little CPU per step (so its checkpoints are worth paying for) and
resumes at the step its checkpoint holds; its stdout is the same wherever it ran."""
CHECKPOINT_WAIT_S = 4.0
"""A provider strike waits at most this long for a provider running checkpointed work."""
TABLE = (
    "submitted",
    "completed",
    "lost",
    "duplicated",
    "checkpointing",
    "resumed",
    "double_paid",
    "underpaid",
    "progress_paid",
    "escrows_locked",
    "escrow_locked_after",
    "escrows_open",
    "ledger_ok",
    "recovery_s",
    "unrecovered",
)


def chaos_spec(index: int) -> JobSpec:
    data: dict[str, Any] = {
        "name": f"chaos-{index}",
        "command": ["sh", "-c", f"sleep 0.{index % 10}; echo job {index}"],
        "resources": {"cpu": 0.1, "memory_mb": 64},
        "timeout_s": 30,
    }
    if index % CHECKPOINT_EVERY == 0:
        script = COUNTER.format(
            steps=COUNTER_STEPS, spin=COUNTER_SPIN, pause=COUNTER_PAUSE_S, index=index
        )
        data["command"] = ["sh", "-c", script]
        data["checkpoint"] = {"interval_s": CHECKPOINT_INTERVAL_S}
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


@dataclass(frozen=True)
class Kill:
    """One SIGKILL: what (``kind``, ``name``; ``did`` for a provider) and when (unix s)."""

    kind: str
    name: str
    at: float
    did: str | None = None


@dataclass
class ChaosLog:
    kills: list[Kill] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    """When the consumer was first started (unix s)."""

    def note(self, kind: str, name: str, did: str | None = None) -> None:
        self.kills.append(Kill(kind, name, time.time(), did))
        print(f"  kill {kind} {name}", file=sys.stderr)


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    stop_process(pid, timeout=5.0)  # reaps it


def checkpointed_providers(jobs: JobRepository) -> set[str]:
    """The providers running a job the consumer holds a checkpoint of (from its store)."""
    providers = set()
    for record in jobs.in_states(("running",)):
        stored = {item.contract_id for item in jobs.checkpoints.for_job(record.job_id)}
        providers.update(
            c["terms"]["provider"] for c in record.contracts if c["terms"]["contract_id"] in stored
        )
    return providers


def strike(
    home: MeshHome, jobs: JobRepository, kind: str, rng: random.Random, log: ChaosLog, consumer: int
) -> int:
    """Kill one process of ``kind`` and bring it back; returns the consumer's pid.

    A provider running a job with a checkpoint is chosen first, if any, so that jobs move
    from checkpoints and their old providers are paid for verified progress."""
    state = home.read_state() or {}
    if kind == "orchestrator":
        log.note(kind, f"pid {consumer}")
        kill(consumer)
        return -1
    pool = state["nodes"] if kind == "provider" else state["hubs"]
    holders = checkpointed_providers(jobs) if kind == "provider" else set()
    victim = rng.choice([node for node in pool if node.get("did") in holders] or pool)
    log.note(kind, victim["name"], victim.get("did"))
    kill(int(victim["pid"]))
    time.sleep(rng.uniform(*RESTART_PAUSE_S))
    if kind == "provider":
        restart_node(home, victim["name"])
    else:
        restart_hub(home, victim["name"])
    return consumer


def run_chaos(home: MeshHome, args: argparse.Namespace, rng: random.Random, log: ChaosLog) -> bool:
    """Drive the consumer to the end while striking; True when it finished by itself."""
    log.started = time.time()
    consumer = start_consumer(home, args.jobs, args.concurrency)
    jobs = open_jobs(home)
    deadline = time.monotonic() + args.deadline
    next_strike = time.monotonic() + rng.uniform(1.0, args.interval)
    strikes = list(args.kinds) if args.each_once else []
    pending: str | None = None
    while time.monotonic() < deadline:
        if consumer < 0:
            consumer = start_consumer(home, args.jobs, args.concurrency)
        if not is_process_alive(consumer):
            if stop_process(consumer) is False and _finished(home, args.jobs):
                return True
            consumer = -1
            continue
        if time.monotonic() >= next_strike and (pending or strikes or not args.each_once):
            pending = pending or (strikes.pop(0) if args.each_once else rng.choice(args.kinds))
            if pending == "provider" and _may_wait_for_checkpoint(jobs, next_strike):
                time.sleep(0.2)
                continue
            consumer = strike(home, jobs, pending, rng, log, consumer)
            pending = None
            next_strike = time.monotonic() + rng.uniform(1.0, args.interval)
        time.sleep(0.1)
    if consumer > 0:
        kill(consumer)
    return False


def _may_wait_for_checkpoint(jobs: JobRepository, due: float) -> bool:
    """Whether a provider strike due at ``due`` may wait (``CHECKPOINT_WAIT_S`` at most) for
    a provider to hold a checkpointed job."""
    return time.monotonic() < due + CHECKPOINT_WAIT_S and not checkpointed_providers(jobs)


def _finished(home: MeshHome, total: int) -> bool:
    records = open_jobs(home).recent(limit=total * 2)
    return len(records) >= total and all(record.is_final for record in records)


# The tally --------------------------------------------------------------------------------


def tally(home: MeshHome, total: int, log: ChaosLog) -> dict[str, Any]:
    jobs = open_jobs(home)
    records = jobs.recent(limit=total * 2)
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
        "checkpointing": sum(1 for r in records if r.spec.get("checkpoint")),
        "resumed": sum(1 for r in records if any(_resumes(c) for c in r.contracts)),
        **audit_ledger(home, jobs, records),
        **recovery_report(records, log),
        "kills": Counter(kill.kind for kill in log.kills),
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


def _resumes(contract: dict[str, Any]) -> bool:
    return contract["terms"].get("resume_from") is not None


# Time to recover ----------------------------------------------------------------------------


def recovery_report(records: list[JobRecord], log: ChaosLog) -> dict[str, Any]:
    """``recovery_s`` (the longest over the kills), the longest per kind, each kill's (when,
    in seconds from the consumer's first start), and how many kills the mesh never
    recovered from (work affected by it never completed)."""
    waits = [(kill, kill_recovery(kill, records)) for kill in log.kills]
    recovered = [(kill, wait) for kill, wait in waits if wait is not None]
    by_kind: dict[str, float] = {}
    for kill, wait in recovered:
        by_kind[kill.kind] = round(max(by_kind.get(kill.kind, 0.0), wait), 2)
    return {
        "recovery_s": round(max((wait for _, wait in recovered), default=0.0), 2),
        "recovery_by_kind": by_kind,
        "unrecovered": len(waits) - len(recovered),
        "recoveries": [
            {
                "kind": kill.kind,
                "name": kill.name,
                "at_s": round(kill.at - log.started, 2),
                "affected": len(affected_jobs(kill, records)),
                "recovery_s": None if wait is None else round(wait, 2),
            }
            for kill, wait in waits
        ],
    }


def kill_recovery(kill: Kill, records: list[JobRecord]) -> float | None:
    """Seconds from ``kill`` until the mesh did the affected work again; None if it never did.

    A provider or hub kill affects the jobs under way on that provider (a hub may carry
    any job's messages: every job under way): recovered once each of them completed (moved
    and resumed or restarted). An orchestrator kill, or a kill that found nothing under
    way, is recovered once the next job completed (after an orchestrator kill, necessarily
    by the restarted consumer).
    """
    affected = affected_jobs(kill, records)
    if affected:
        finishes = [_completed_at(record) for record in affected]
        if any(finish is None for finish in finishes):
            return None
        return max(finish for finish in finishes if finish is not None) - kill.at
    later = [
        finish for finish in map(_completed_at, records) if finish is not None and finish > kill.at
    ]
    return min(later) - kill.at if later else None


def affected_jobs(kill: Kill, records: list[JobRecord]) -> list[JobRecord]:
    """The jobs a kill interrupted: none for an orchestrator (see ``kill_recovery``)."""
    if kill.kind == "provider":
        return [r for r in records if _under_way(r, kill.at) and _on(r, kill.did, kill.at)]
    if kill.kind == "hub":
        return [r for r in records if _under_way(r, kill.at)]
    return []


def _under_way(record: JobRecord, at: float) -> bool:
    """Submitted before ``at`` and not yet final then."""
    ended = _final_at(record)
    return record.created_at <= at and (ended is None or ended > at)


def _on(record: JobRecord, provider: str | None, at: float) -> bool:
    """Whether the job's latest placement before ``at`` was on ``provider``."""
    placed = [e for e in record.history if e["event"] == "placed" and e["at"] <= at]
    return bool(placed) and placed[-1]["detail"].get("provider") == provider


def _final_at(record: JobRecord) -> float | None:
    """When the job reached its final status (its history's event), None while it is not."""
    if not record.is_final:
        return None
    ends = [e["at"] for e in record.history if e["event"] == record.status]
    return ends[-1] if ends else record.updated_at


def _completed_at(record: JobRecord) -> float | None:
    return _final_at(record) if record.status == "completed" else None


# The ledger audit -------------------------------------------------------------------------


@dataclass
class ContractPaid:
    """What the ledger moved for one contract: escrow locked, releases, units paid."""

    job_id: str | None = None
    releases: int = 0
    paid: int = 0
    result_ids: list[str] = field(default_factory=list)

    @property
    def locked(self) -> bool:
        return self.job_id is not None


def audit_ledger(home: MeshHome, jobs: JobRepository, records: list[JobRecord]) -> dict[str, Any]:
    """Check every payment of the consumer's against the jobs it accepted.

    Each contract is paid at most once, for one document: the price of its one accepted
    result, or, for a contract a completed job dropped (relocation, migration), the price
    of the checkpoint of its that a verified result resumed from (``verified_progress``);
    nothing for any other (a failed, superseded without such a checkpoint, or orphaned
    contract). ``double_paid`` counts the contracts paid more than once, more than that
    price, or for another document; ``underpaid`` the payable ones paid less than their
    price; ``progress_paid`` the dropped contracts paid for a checkpoint;
    ``escrow_locked_after`` the units left in escrow, and ``escrows_open`` the contracts
    holding them, once every job is final.
    """
    consumer = load_or_create_identity(home.root)
    ledger = open_ledger(home.ledger_db, consumer)
    paid = contracts_paid(ledger.history(consumer.did))
    payable = payable_documents(jobs, records)
    open_escrows = [cid for cid, seen in paid.items() if seen.locked and _is_open(ledger, cid)]
    report = ledger.verify()
    return {
        "double_paid": sum(1 for cid, seen in paid.items() if _overpaid(seen, payable.get(cid))),
        "underpaid": sum(1 for cid, due in payable.items() if _paid(paid, cid) < due.price),
        "progress_paid": sum(
            1 for cid, due in payable.items() if due.progress and _paid(paid, cid) > 0
        ),
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
            seen.result_ids.append(str(receipt.body.get("result_id")))
    return paid


@dataclass(frozen=True)
class Payable:
    """What one contract may be paid: ``price`` for the document ``result_id``."""

    price: int
    result_id: str
    progress: bool
    """For a checkpoint (verified progress of a dropped contract), not a result."""


def payable_documents(jobs: JobRepository, records: list[JobRecord]) -> dict[str, Payable]:
    """By contract id: each accepted result of a completed, verified job at the price of
    its signed usage, and each checkpoint of a dropped contract such a result resumed from
    at the price of the usage signed into it."""
    payable: dict[str, Payable] = {}
    for record in records:
        if record.status != "completed" or not record.verified:
            continue
        terms = {c["terms"]["contract_id"]: c["terms"] for c in record.contracts}
        for document in record.results:
            result = JobResult.model_validate(document["body"])
            contract = ContractTerms.model_validate(terms[result.contract_id])
            price = charge_for_usage(result.usage, contract)
            payable[result.contract_id] = Payable(price, document_digest(document), False)
        superseded = jobs.superseded(record.job_id)
        dropped = {c["terms"]["contract_id"]: c["terms"] for c in superseded}
        progress = verified_progress(
            stored_outcome(jobs, record), record.contracts, superseded, _by_digest(jobs, record)
        )
        for contract_id, checkpoint in progress.items():
            usage = Checkpoint.model_validate(checkpoint["body"]).usage
            price = charge_for_usage(usage, ContractTerms.model_validate(dropped[contract_id]))
            payable[contract_id] = Payable(price, document_digest(checkpoint), True)
    return payable


def _by_digest(jobs: JobRepository, record: JobRecord) -> CheckpointByDigest:
    def document(sha256: str) -> dict[str, Any] | None:
        stored = jobs.checkpoints.by_digest(record.job_id, sha256)
        return None if stored is None else stored.document

    return document


def _overpaid(seen: ContractPaid, due: Payable | None) -> bool:
    """Paid more than once, more than its price, or for a document it may not be paid for
    (a release of nothing, refunding the escrow, counts for no document)."""
    if seen.releases > 1:
        return True
    if due is None:
        return seen.paid > 0
    return seen.paid > due.price or (seen.paid > 0 and seen.result_ids != [due.result_id])


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
    worst = result["recovery_by_kind"].items()
    print("recovery_s by kind: " + ", ".join(f"{kind} {wait}" for kind, wait in worst))
    for item in result["recoveries"]:
        print(
            f"  {item['kind']} {item['name']} killed at {item['at_s']} s,"
            f" {item['affected']} job(s) under way: recovered in {item['recovery_s']} s"
        )
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
