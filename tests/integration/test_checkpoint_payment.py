"""A provider SIGKILLed mid-job is paid for its verified checkpoint, and nothing more.

Real nats-server, two provider processes running a stateful counter under bubblewrap, a
consumer session in this process and the local mesh's SQLite ledger. The counter burns CPU
each step and keeps its state in CMESH_CHECKPOINT_DIR. Its node is SIGKILLed once a
checkpoint is stored; the failure detector declares it dead, recovery relocates the job by
itself to the other node, which resumes from the latest checkpoint and finishes with the
right total. Then the killed provider has exactly the split of its checkpoint's signed
usage at its contract's rate, the successor the split of its result's, the consumer the
rest back, and the ledger's supply is unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from computemesh.app.consumer import consumer_session
from computemesh.app.home import MeshHome
from computemesh.app.ledger import LOCAL_FAUCET_CREDITS
from computemesh.app.localmesh import mesh_down, mesh_up
from computemesh.identity import document_digest, load_or_create_identity
from computemesh.models.job import JobSpec
from computemesh.models.market import Checkpoint, ContractTerms, JobResult
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.settlement import SqliteLedger, credits_to_units
from computemesh.settlement.pricing import charge_for_usage

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.timeout(300),
]

SETTINGS = OrchestratorSettings(bid_window_s=1.0, placement_timeout_s=30, fetch_interval_s=1.0)
TARGET, BUSY_S, INTERVAL_S = 30, 0.08, 0.5
AWAIT_S = 150.0
"""Detection (about 5 s), a new placement and the rest of the run, on a slow machine."""

BUSY_COUNTER = """
import json, os, sys, time
target, busy = int(sys.argv[1]), float(sys.argv[2])
path = os.path.join(os.environ["CMESH_CHECKPOINT_DIR"], "state.json")
step = total = 0
if os.path.exists(path):
    state = json.load(open(path))
    step, total = state["step"], state["total"]
    print(f"resumed at step {step}", flush=True)
while step < target:
    until = time.process_time() + busy
    while time.process_time() < until:
        pass
    step += 1
    total += step
    with open(path + ".partial", "w") as handle:
        json.dump({"step": step, "total": total}, handle)
    os.replace(path + ".partial", path)
    print(f"step {step}", flush=True)
open("total.txt", "w").write(f"{total}\\n")
"""


def busy_counter() -> JobSpec:
    data = {
        "name": "busy-counter",
        "command": ["python3", "counter.py", str(TARGET), str(BUSY_S)],
        "inputs": [{"path": "counter.py", "content": BUSY_COUNTER}],
        "outputs": ["total.txt"],
        "checkpoint": {"interval_s": INTERVAL_S},
        "timeout_s": 600,
    }
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


async def wait_for_checkpoint(orchestrator: Orchestrator, job_id: str, step: int) -> None:
    """Until a stored checkpoint's log shows the counter at ``step`` or beyond."""
    for _ in range(1200):
        text = "".join(chunk.data for chunk in orchestrator.jobs.logs.after(job_id))
        reached = max(map(int, re.findall(r"^step (\d+)$", text, re.MULTILINE)), default=0)
        latest = orchestrator.jobs.checkpoints.latest(job_id)
        if reached >= step and latest is not None and latest.seq >= 1:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no checkpoint past step {step} of job {job_id}")


async def test_a_killed_provider_is_paid_for_its_verified_checkpoint_only(
    tmp_path: Path,
) -> None:
    home = MeshHome(tmp_path / "home")
    state = mesh_up(home, nodes=2)
    try:
        async with consumer_session(home, state["nats_url"], settings=SETTINGS) as orchestrator:
            await orchestrator.discover(window_s=1.0)
            job_id = orchestrator.submit(busy_counter())
            (contract,) = await orchestrator.place(job_id)
            lost = ContractTerms.model_validate(contract["terms"])
            await wait_for_checkpoint(orchestrator, job_id, TARGET // 3)
            victim = next(node for node in state["nodes"] if node["did"] == lost.provider)
            os.kill(victim["pid"], signal.SIGKILL)

            record = await orchestrator.await_outcome(job_id, timeout=AWAIT_S)
            superseded = orchestrator.jobs.superseded(job_id)
            (held,) = record.contracts
            successor = ContractTerms.model_validate(held["terms"])
            assert successor.resume_from is not None
            resumed = orchestrator.jobs.checkpoints.by_digest(job_id, successor.resume_from)
    finally:
        mesh_down(home)

    assert record.status == "completed", record.reason
    (result,) = record.results
    body = JobResult.model_validate(result["body"])
    (output,) = body.outputs
    assert output.content_b64 is not None
    assert base64.b64decode(output.content_b64) == f"{TARGET * (TARGET + 1) // 2}\n".encode()
    assert body.provider == successor.provider != lost.provider
    assert re.search(r"^resumed at step \d+$", body.stdout, re.MULTILINE)
    events = [entry["event"] for entry in record.history]
    assert events == ["submitted", "placed", "relocated", "placed", "completed"]
    moved = record.history[2]["detail"]
    assert (moved["from"], moved["refunded"], moved["escrow_held"]) == (lost.provider, False, True)

    assert [item["terms"]["contract_id"] for item in superseded] == [lost.contract_id]
    assert resumed is not None and resumed.contract_id == lost.contract_id
    checkpoint = Checkpoint.model_validate(resumed.document["body"])
    assert checkpoint.usage.cpu_s > 0  # metered from the live process tree

    consumer = load_or_create_identity(home.root)
    ledger = SqliteLedger.open(home.ledger_db, consumer)
    split = ledger.split
    progress = charge_for_usage(checkpoint.usage, lost)
    final = charge_for_usage(body.usage, successor)
    assert progress > 0 and final > 0
    assert ledger.balance(lost.provider).available == split.shares(progress).provider
    assert ledger.balance(successor.provider).available == split.shares(final).provider
    old, new = ledger.escrow(lost.contract_id), ledger.escrow(successor.contract_id)
    assert (old.closed, old.released, old.refunded) == (True, progress, old.locked - progress)
    assert (new.closed, new.released, new.refunded) == (True, final, new.locked - final)
    releases = [r for r in ledger.history(consumer.did) if r.op == "release"]
    paid_ids = sorted(r.body["result_id"] for r in releases)
    assert paid_ids == sorted([document_digest(resumed.document), document_digest(result)])

    faucet = credits_to_units(LOCAL_FAUCET_CREDITS)
    mine = ledger.balance(consumer.did)
    assert (mine.available, mine.escrowed) == (faucet - progress - final, 0)
    treasury = ledger.balance(ledger.treasury).available
    shares = [split.shares(amount) for amount in (progress, final)]
    assert treasury == sum(item.treasury + item.creator for item in shares)
    report = ledger.verify()
    assert report.ok, report.problems
    earned = sum(ledger.balance(did).available for did in (lost.provider, successor.provider))
    assert report.supply == faucet == mine.available + treasury + earned
