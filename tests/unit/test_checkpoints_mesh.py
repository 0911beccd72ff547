"""Checkpoints and live logs on the in-memory mesh: real nodes and orchestrator, a counting job.

The executor here runs no process: its "job" is an asyncio task that counts, keeping its
state in the real checkpoint directory the executor contract prescribes, so snapshotting,
signing, pushing, storing, fetching, verifying and restoring all run for real.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import re
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from computemesh.actor import Actor, behaviours
from computemesh.executor.base import (
    CollectedOutput,
    ExecutionHandle,
    ExecutionRequest,
    ExecutionResult,
)
from computemesh.executor.checkpoint import prepare_checkpoint_dir, snapshot
from computemesh.executor.workdir import create_job_dir, remove_tree
from computemesh.identity import Identity
from computemesh.models.errors import MeshError, VerificationError
from computemesh.models.job import JobSpec
from computemesh.models.market import Checkpoint, Hardware, ResourceUsage
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.protocol.checkpoints import checkpoint_payload, sign_checkpoint
from computemesh.store import AllocationRepository, JobRepository, open_database
from computemesh.store.checkpoints import StoredCheckpoint
from computemesh.transport import MemoryHub, MemoryTransport
from tests.unit.test_actor_retry import LossyHub

FAST = OrchestratorSettings(bid_window_s=0.3, placement_timeout_s=2.0, fetch_interval_s=0.5)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)
STEP_S = 0.02


@dataclass
class CountingJob:
    task: asyncio.Task[None] | None = None
    stopped: bool = False


@dataclass
class CountingExecutor:
    """Counts to ``command[1]``, one step every ``STEP_S``, state in the checkpoint dir."""

    name: str = "process"
    jobs: dict[ExecutionHandle, CountingJob] = field(default_factory=dict)
    started: int = 0

    async def prepare(self, request: ExecutionRequest, work_root: Path) -> ExecutionHandle:
        job_dir, work_dir = create_job_dir(work_root, request.job_id)
        checkpoint_dir = prepare_checkpoint_dir(job_dir, request, None)
        handle = ExecutionHandle(
            request, job_dir=job_dir, work_dir=work_dir, checkpoint_dir=checkpoint_dir
        )
        self.jobs[handle] = CountingJob()
        return handle

    async def start(self, handle: ExecutionHandle) -> None:
        self.started += 1
        self.jobs[handle].task = asyncio.create_task(self._count(handle))
        handle.state = "running"

    async def _count(self, handle: ExecutionHandle) -> None:
        assert handle.checkpoint_dir is not None and handle.on_output is not None
        state_path = handle.checkpoint_dir / "state.json"
        step, total = 0, 0
        if state_path.exists():
            state = json.loads(state_path.read_text())
            step, total = state["step"], state["total"]
            handle.on_output("stdout", f"resumed at step {step}\n".encode())
        target = int(handle.request.command[1])
        while step < target:
            await asyncio.sleep(STEP_S)
            step += 1
            total += step
            state_path.write_text(json.dumps({"step": step, "total": total}))
            handle.on_output("stdout", f"step {step}\n".encode())
        (handle.work_dir / "total.txt").write_text(f"{total}\n")

    async def wait(self, handle: ExecutionHandle) -> ExecutionResult:
        job = self.jobs[handle]
        assert job.task is not None
        await job.task
        data = (handle.work_dir / "total.txt").read_bytes()
        output = CollectedOutput("total.txt", hashlib.sha256(data).hexdigest(), len(data), data)
        handle.state = "finished"
        return ExecutionResult(
            status="completed",
            reason="exited with code 0",
            exit_code=0,
            stdout=b"",
            stderr=b"",
            stdout_truncated=False,
            stderr_truncated=False,
            outputs=[output],
            usage=ResourceUsage(wall_s=0.1, cpu_s=0.0, max_rss_kb=0, bytes_out=len(data)),
        )

    async def stop(self, handle: ExecutionHandle) -> None:
        job = self.jobs.get(handle)
        if job is not None and job.task is not None and not job.task.done():
            job.task.cancel()
            await asyncio.gather(job.task, return_exceptions=True)

    async def cleanup(self, handle: ExecutionHandle) -> None:
        await self.stop(handle)
        remove_tree(handle.job_dir)
        handle.state = "cleaned"
        self.jobs.pop(handle, None)

    async def usage(self, handle: ExecutionHandle) -> ResourceUsage:
        return ResourceUsage(wall_s=0.0, cpu_s=0.0, max_rss_kb=0)

    async def checkpoint(self, handle: ExecutionHandle) -> bytes:
        return await snapshot(handle)


@dataclass
class Mesh:
    nodes: list[ProviderNode]
    executors: list[CountingExecutor]
    orchestrator: Orchestrator


def make_node(hub: MemoryHub, home: Path, executor: CountingExecutor) -> ProviderNode:
    return ProviderNode(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
        settings=NodeSettings(home=home),
        hardware=HARDWARE,
        allocations=AllocationRepository(open_database("sqlite://")),
        executors={"process": executor},
    )


@pytest.fixture
def hub() -> LossyHub:
    """The bus, losing checkpoint fetches only when a test says how many."""
    return LossyHub(behaviours.CHECKPOINT_FETCH, count=0)


@pytest.fixture
async def mesh(tmp_path: Path, hub: LossyHub) -> AsyncIterator[Mesh]:
    executors = [CountingExecutor(), CountingExecutor()]
    nodes = [make_node(hub, tmp_path / f"n{i}", ex) for i, ex in enumerate(executors)]
    for node in nodes:
        await node.start()
    orchestrator = Orchestrator(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
        jobs=JobRepository(open_database("sqlite://")),
        settings=FAST,
    )
    await orchestrator.start()
    await orchestrator.discover(window_s=0.2)
    yield Mesh(nodes, executors, orchestrator)
    await orchestrator.stop()
    for node in nodes:
        await node.stop()


def counter_job(target: int, interval_s: float = 0.1) -> JobSpec:
    data = {
        "name": "counter",
        "command": ["count", str(target)],
        "outputs": ["total.txt"],
        "checkpoint": {"interval_s": interval_s},
        "timeout_s": 30,
    }
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


def steps_in(text: str) -> list[int]:
    return [int(number) for number in re.findall(r"^step (\d+)$", text, re.MULTILINE)]


async def wait_for_step(orchestrator: Orchestrator, job_id: str, step: int) -> None:
    for _ in range(500):
        text = "".join(chunk.data for chunk in orchestrator.jobs.logs.after(job_id))
        if steps_in(text) and max(steps_in(text)) >= step:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached step {step}")


async def test_counter_stopped_half_way_resumes_on_another_node(mesh: Mesh) -> None:
    orchestrator, target, interval = mesh.orchestrator, 60, 0.1
    job_id = orchestrator.submit(counter_job(target, interval))
    (contract,) = await orchestrator.place(job_id)
    first = next(node for node in mesh.nodes if node.did == contract["terms"]["provider"])
    await wait_for_step(orchestrator, job_id, target // 2)
    await first.stop()
    seen_first = "".join(chunk.data for chunk in orchestrator.jobs.logs.after(job_id))
    last_step_first = max(steps_in(seen_first))
    assert last_step_first < target

    latest = orchestrator.jobs.checkpoints.latest(job_id)
    assert latest is not None
    (second_contract,) = await orchestrator.resume(job_id, exclude=[first.did])
    assert second_contract["terms"]["provider"] != first.did
    assert second_contract["terms"]["resume_from"] == latest.sha256
    record = await orchestrator.await_outcome(job_id, timeout=20)

    assert record.status == "completed", record.reason
    (result,) = record.results
    assert result["body"]["provider"] != first.did
    (output,) = result["body"]["outputs"]
    assert base64.b64decode(output["content_b64"]) == f"{target * (target + 1) // 2}\n".encode()
    text = "".join(chunk.data for chunk in orchestrator.jobs.logs.after(job_id))
    resumed_at = int(re.findall(r"resumed at step (\d+)", text)[0])
    steps_per_interval = interval / STEP_S
    assert last_step_first - resumed_at <= steps_per_interval + 1
    assert result["body"]["usage"]["bytes_out"] >= output["size"]


async def test_a_checkpoint_fetch_lost_on_the_bus_is_asked_again(mesh: Mesh, hub: LossyHub) -> None:
    orchestrator, target = mesh.orchestrator, 40
    job_id = orchestrator.submit(counter_job(target))
    (contract,) = await orchestrator.place(job_id)
    first = next(node for node in mesh.nodes if node.did == contract["terms"]["provider"])
    await wait_for_step(orchestrator, job_id, target // 2)
    await first.stop()
    assert orchestrator.jobs.checkpoints.latest(job_id) is not None

    hub.left_to_drop = 1  # the resuming node's first fetch is lost, as in a hub failover
    (second,) = await orchestrator.resume(job_id, exclude=[first.did])
    record = await orchestrator.await_outcome(job_id, timeout=25)

    assert record.status == "completed", record.reason
    assert hub.dropped == 1
    assert record.results[0]["body"]["provider"] == second["terms"]["provider"]
    text = "".join(chunk.data for chunk in orchestrator.jobs.logs.after(job_id))
    assert int(re.findall(r"resumed at step (\d+)", text)[0]) > 0


async def test_checkpoints_are_pushed_signed_and_sequenced(mesh: Mesh) -> None:
    orchestrator = mesh.orchestrator
    record = await orchestrator.run(counter_job(10, interval_s=0.1), timeout=10)
    assert record.status == "completed"
    stored = orchestrator.jobs.checkpoints.for_job(record.job_id)
    assert stored, "at least the final snapshot is kept"
    assert [item.seq for item in stored] == list(range(len(stored)))
    assert len({item.sha256 for item in stored}) == len(stored)
    final_state = json.loads(_state_file(stored[-1].archive))
    assert final_state == {"step": 10, "total": 55}
    (result,) = record.results
    assert result["body"]["usage"]["bytes_out"] >= sum(len(item.archive) for item in stored)


def _state_file(archive: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile("state.json")
        assert member is not None
        return member.read()


async def test_tampered_checkpoint_is_refused_before_anything_runs(mesh: Mesh) -> None:
    orchestrator = mesh.orchestrator
    record = await orchestrator.run(counter_job(5, interval_s=0.1), timeout=10)
    latest = orchestrator.jobs.checkpoints.latest(record.job_id)
    assert latest is not None
    job_id = orchestrator.submit(counter_job(5, interval_s=0.1))
    forged = bytearray(latest.archive)
    forged[-2000] ^= 0xFF
    _store_raw(orchestrator, job_id, latest.document, bytes(forged))
    started = sum(executor.started for executor in mesh.executors)
    await orchestrator.place(job_id)
    outcome = await orchestrator.await_outcome(job_id, timeout=10)
    assert outcome.status == "failed"
    assert "invalid_checkpoint" in outcome.results[0]["body"]["reason"]
    assert sum(executor.started for executor in mesh.executors) == started


def _store_raw(
    orchestrator: Orchestrator, job_id: str, document: dict[str, Any], archive: bytes
) -> None:
    orchestrator.jobs.checkpoints.add(
        StoredCheckpoint(job_id, "0" * 32, 0, document["body"]["sha256"], document, archive, 0.0)
    )


async def test_checkpoint_from_a_stranger_is_not_stored(mesh: Mesh) -> None:
    orchestrator = mesh.orchestrator
    record = await orchestrator.run(counter_job(3), timeout=10)
    contract_id = record.contracts[0]["terms"]["contract_id"]
    stranger = Identity.generate()
    archive = b"\0" * 1024
    body = Checkpoint(
        contract_id=contract_id,
        job_id=record.job_id,
        provider=stranger.did,
        seq=99,
        sha256=hashlib.sha256(archive).hexdigest(),
        size=len(archive),
        created_at_ms=0,
        usage=ResourceUsage(wall_s=1.0, cpu_s=1.0, max_rss_kb=0),
    )
    payload = checkpoint_payload(sign_checkpoint(stranger, body), archive)
    with pytest.raises(VerificationError, match="does not hold"):
        orchestrator.checkpoints.accept(stranger.did, payload)
    with pytest.raises(VerificationError, match="signed by"):
        orchestrator.checkpoints.accept(record.contracts[0]["terms"]["provider"], payload)


async def test_resume_without_checkpoint_says_so(mesh: Mesh) -> None:
    job_id = mesh.orchestrator.submit(counter_job(3))
    with pytest.raises(MeshError, match="no checkpoint"):
        await mesh.orchestrator.resume(job_id, exclude=[mesh.nodes[0].did])


async def test_live_logs_arrive_in_order_while_the_job_runs(mesh: Mesh) -> None:
    orchestrator = mesh.orchestrator
    job_id = orchestrator.submit(counter_job(30))
    await orchestrator.place(job_id)
    await wait_for_step(orchestrator, job_id, 5)
    assert not orchestrator.jobs.get(job_id).is_final
    await orchestrator.await_outcome(job_id, timeout=10)
    chunks = orchestrator.jobs.logs.after(job_id)
    assert [chunk.seq for chunk in chunks] == list(range(len(chunks)))
    assert steps_in("".join(chunk.data for chunk in chunks)) == list(range(1, 31))
