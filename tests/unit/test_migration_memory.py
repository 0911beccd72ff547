"""Better-match migration on the in-memory mesh: real nodes, orchestrator and SqliteLedger.

A job running on an expensive node moves to a much cheaper node that joins later, when its
spec allows it: the old allocation is cancelled and refunded, the history says
``migrated``, and the result comes from the new node (resumed from the latest checkpoint
when the job keeps them; the old node is then paid for that checkpoint once the result
verified, and for nothing more).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from computemesh.actor import Actor
from computemesh.executor import ExecutionResult
from computemesh.executor.base import ExecutionHandle, Executor
from computemesh.identity import Identity
from computemesh.models.job import JobSpec, MigrationPolicy
from computemesh.models.market import Checkpoint, ContractTerms, Hardware, ResourceUsage
from computemesh.node.provider import CANCELLED_REASON, ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.settlement import LedgerSettings, SqliteLedger, credits_to_units
from computemesh.settlement.pricing import charge_for_usage
from computemesh.store import AllocationRepository, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from tests.fakes import FakeExecutor, FakeHandle
from tests.unit.test_checkpoints_mesh import CountingExecutor, steps_in, wait_for_step

pytestmark = pytest.mark.timeout(60)

SETTINGS = OrchestratorSettings(bid_window_s=0.2, placement_timeout_s=2.0, fetch_interval_s=0.3)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)
MOVE_AT_ONCE = MigrationPolicy(enabled=True, min_gain=0.2, min_interval_s=0)
EXPENSIVE, CHEAP = 1.0, 0.01


@dataclass
class GatedExecutor(FakeExecutor):
    """A fake whose runs finish only once ``gate`` is set; remembers its handles."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    handles: list[FakeHandle] = field(default_factory=list)

    async def wait(self, handle: FakeHandle) -> ExecutionResult:
        self.handles.append(handle)
        await self.gate.wait()
        return await super().wait(handle)


@dataclass
class MeteredCountingExecutor(CountingExecutor):
    """A counter whose checkpoints carry CPU time, so the progress they prove is worth paying."""

    async def usage(self, handle: ExecutionHandle) -> ResourceUsage:
        return ResourceUsage(wall_s=60.0, cpu_s=60.0, max_rss_kb=0)


@dataclass
class Mesh:
    hub: MemoryHub
    ledger: SqliteLedger
    consumer: Identity
    orchestrator: Orchestrator
    tmp_path: Path
    nodes: list[ProviderNode] = field(default_factory=list)

    async def add_node(self, price: float, executor: Executor) -> ProviderNode:
        identity = Identity.generate()
        node = ProviderNode(
            actor=Actor(identity=identity, transport=MemoryTransport(self.hub)),
            settings=NodeSettings(
                home=self.tmp_path / f"n{len(self.nodes)}",
                region="eu-west",
                price_per_cpu_hour=price,
            ),
            hardware=HARDWARE,
            allocations=AllocationRepository(open_database("sqlite://")),
            executors={"process": executor},
            settlement=SqliteLedger.open(self.tmp_path / "ledger.db", identity),
        )
        await node.start()
        self.nodes.append(node)
        await eventually(lambda: node.did in self.orchestrator.known_nodes)
        return node


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    hub = MemoryHub()
    consumer, treasury = Identity.generate(), Identity.generate()
    ledger = SqliteLedger.open(
        tmp_path / "ledger.db", consumer, LedgerSettings(treasury=treasury.did)
    )
    ledger.deposit(consumer.did, credits_to_units(100), deposit_id="test-funds")
    orchestrator = Orchestrator(
        actor=Actor(identity=consumer, transport=MemoryTransport(hub)),
        jobs=JobRepository(open_database("sqlite://")),
        settings=SETTINGS,
        ledger=ledger,
    )
    await orchestrator.start()
    mesh = Mesh(hub, ledger, consumer, orchestrator, tmp_path)
    yield mesh
    await orchestrator.stop()
    for node in mesh.nodes:
        await node.stop()


async def eventually(check: Callable[[], bool], step_s: float = 0.02) -> None:
    """Until ``check()`` holds (the test's timeout bounds the wait)."""
    while True:
        if check():
            return
        await asyncio.sleep(step_s)


def job(migration: MigrationPolicy | None) -> JobSpec:
    data: dict[str, Any] = {
        "name": "echo",
        "command": ["cat", "in.txt"],
        "inputs": [{"path": "in.txt", "content": "hello mesh"}],
        "outputs": ["out.txt"],
        "timeout_s": 600,
    }
    if migration is not None:
        data["migration"] = migration.model_dump()
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


def events(mesh: Mesh, job_id: str, name: str) -> list[dict[str, Any]]:
    history = mesh.orchestrator.jobs.get(job_id).history
    return [entry["detail"] for entry in history if entry["event"] == name]


async def test_a_job_moves_to_a_much_cheaper_node_that_joins_later(mesh: Mesh) -> None:
    gated = GatedExecutor()
    expensive = await mesh.add_node(EXPENSIVE, gated)
    job_id = mesh.orchestrator.submit(job(MOVE_AT_ONCE))
    (first,) = await mesh.orchestrator.place(job_id)
    assert first["terms"]["provider"] == expensive.did
    await eventually(lambda: bool(gated.handles))

    cheap = await mesh.add_node(CHEAP, FakeExecutor())  # joining triggers a check
    record = await mesh.orchestrator.await_outcome(job_id, timeout=10)
    await eventually(lambda: bool(events(mesh, job_id, "migrated")))  # noted once cancelled

    assert (record.status, record.verified) == ("completed", True), record.reason
    (result,) = record.results
    assert result["body"]["provider"] == cheap.did
    assert [c["terms"]["provider"] for c in record.contracts] == [cheap.did]
    (moved,) = events(mesh, job_id, "migrated")
    assert (moved["from"], moved["to"]) == (expensive.did, cheap.did)
    assert moved["contract_id"] == first["terms"]["contract_id"]
    assert (moved["cancelled"], moved["refunded"], moved["escrow_held"]) == ("killed", True, False)
    assert moved["gain"] >= MOVE_AT_ONCE.min_gain
    old = expensive.allocations.get(first["terms"]["contract_id"])
    assert old is not None and old.result is not None
    assert (old.result["body"]["status"], old.result["body"]["reason"]) == (
        "killed",
        CANCELLED_REASON,
    )
    assert gated.handles[0].stopped and expensive.ledger.running == 0
    escrow = mesh.ledger.escrow(first["terms"]["contract_id"])
    assert escrow.closed and escrow.released == 0 and escrow.refunded == escrow.locked
    assert mesh.ledger.balance(expensive.did).available == 0


async def test_a_job_without_the_policy_stays_where_it_is(mesh: Mesh) -> None:
    gated = GatedExecutor()
    expensive = await mesh.add_node(EXPENSIVE, gated)
    job_id = mesh.orchestrator.submit(job(None))
    await mesh.orchestrator.place(job_id)
    await mesh.add_node(CHEAP, FakeExecutor())

    assert await mesh.orchestrator.migration.check() == []
    gated.gate.set()
    record = await mesh.orchestrator.await_outcome(job_id, timeout=10)

    assert record.status == "completed"
    assert record.results[0]["body"]["provider"] == expensive.did
    assert events(mesh, job_id, "migrated") == []


async def test_a_job_that_moved_recently_or_would_gain_little_stays(mesh: Mesh) -> None:
    gated = GatedExecutor()
    await mesh.add_node(EXPENSIVE, gated)
    patient = mesh.orchestrator.submit(
        job(MOVE_AT_ONCE.model_copy(update={"min_interval_s": 3600}))
    )
    demanding = mesh.orchestrator.submit(job(MOVE_AT_ONCE.model_copy(update={"min_gain": 50})))
    for job_id in (patient, demanding):
        await mesh.orchestrator.place(job_id)
    await mesh.add_node(CHEAP, FakeExecutor())

    assert await mesh.orchestrator.migration.check() == []
    for job_id in (patient, demanding):
        assert events(mesh, job_id, "migrated") == []
        assert mesh.orchestrator.jobs.get(job_id).status == "running"


async def test_a_checkpointing_job_resumes_on_the_new_node(mesh: Mesh) -> None:
    target, interval = 80, 0.1
    orchestrator = mesh.orchestrator
    expensive = await mesh.add_node(EXPENSIVE, CountingExecutor())
    spec = resolve_inputs(
        JobSpec.model_validate(
            {
                "name": "counter",
                "command": ["count", str(target)],
                "outputs": ["total.txt"],
                "checkpoint": {"interval_s": interval},
                "timeout_s": 30,
                "migration": MOVE_AT_ONCE.model_dump(),
            }
        ),
        Path("."),
    )
    job_id = orchestrator.submit(spec)
    await orchestrator.place(job_id)
    await wait_for_step(orchestrator, job_id, target // 4)
    await eventually(lambda: orchestrator.checkpoints.latest_digest(job_id) is not None)

    cheap = await mesh.add_node(CHEAP, CountingExecutor())
    record = await orchestrator.await_outcome(job_id, timeout=20)

    assert record.status == "completed", record.reason
    (result,) = record.results
    assert result["body"]["provider"] == cheap.did
    (moved,) = events(mesh, job_id, "migrated")
    assert moved["from"] == expensive.did and moved["resume_from"] is not None
    assert record.contracts[0]["terms"]["resume_from"] == moved["resume_from"]
    (output,) = result["body"]["outputs"]
    assert base64.b64decode(output["content_b64"]) == f"{target * (target + 1) // 2}\n".encode()
    text = "".join(chunk.data for chunk in orchestrator.jobs.logs.after(job_id))
    assert int(re.findall(r"resumed at step (\d+)", text)[0]) > 0
    assert max(steps_in(text)) == target


def counter(target: int, interval_s: float) -> JobSpec:
    return resolve_inputs(
        JobSpec.model_validate(
            {
                "name": "counter",
                "command": ["count", str(target)],
                "outputs": ["total.txt"],
                "checkpoint": {"interval_s": interval_s},
                "timeout_s": 30,
                "migration": MOVE_AT_ONCE.model_dump(),
            }
        ),
        Path("."),
    )


async def test_the_old_node_is_paid_for_the_checkpoint_the_job_resumed_from(mesh: Mesh) -> None:
    target = 80
    orchestrator = mesh.orchestrator
    expensive = await mesh.add_node(EXPENSIVE, MeteredCountingExecutor())
    job_id = orchestrator.submit(counter(target, 0.1))
    (first,) = await orchestrator.place(job_id)
    old = ContractTerms.model_validate(first["terms"])
    await wait_for_step(orchestrator, job_id, target // 4)
    await eventually(lambda: orchestrator.checkpoints.latest_digest(job_id) is not None)

    cheap = await mesh.add_node(CHEAP, CountingExecutor())
    await eventually(lambda: bool(events(mesh, job_id, "migrated")))
    (moved,) = events(mesh, job_id, "migrated")
    assert (moved["refunded"], moved["escrow_held"]) == (False, True)
    record = await orchestrator.await_outcome(job_id, timeout=20)

    assert (record.status, record.verified) == ("completed", True), record.reason
    assert record.results[0]["body"]["provider"] == cheap.did
    resumed = orchestrator.jobs.checkpoints.by_digest(job_id, moved["resume_from"])
    assert resumed is not None and resumed.contract_id == old.contract_id
    progress = charge_for_usage(Checkpoint.model_validate(resumed.document["body"]).usage, old)
    assert progress > 0
    escrow = mesh.ledger.escrow(old.contract_id)
    assert (escrow.closed, escrow.released) == (True, progress)
    assert escrow.refunded == escrow.locked - progress
    paid = mesh.ledger.balance(expensive.did).available
    assert paid == mesh.ledger.split.shares(progress).provider
