"""A provider that stops heartbeating mid-job is declared dead and its job moves: on the
in-memory mesh with real nodes (heartbeating under supervisors), a real orchestrator and a
real SqliteLedger."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from computemesh.actor import Actor, Supervisor
from computemesh.executor import ExecutionResult
from computemesh.identity import Identity
from computemesh.models.job import JobSpec
from computemesh.models.market import Hardware
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.liveness import NodeState
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.settlement import LedgerSettings, SqliteLedger, credits_to_units
from computemesh.store import AllocationRepository, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from tests.fakes import FakeExecutor, FakeHandle

pytestmark = pytest.mark.timeout(60)

SETTINGS = OrchestratorSettings(
    bid_window_s=0.2,
    placement_timeout_s=10.0,
    fetch_interval_s=0.3,
    # Ten heartbeats before suspicion: a loaded machine may stall the loop for a while.
    suspect_after_s=1.0,
    dead_after_s=2.0,
    sweep_interval_s=0.1,
)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)


@dataclass
class GatedExecutor(FakeExecutor):
    """A fake whose runs finish only once ``gate`` is set; ``started`` is set by each run."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, handle: FakeHandle) -> ExecutionResult:
        self.started.set()
        await self.gate.wait()
        return await super().wait(handle)


@dataclass
class RunningNode:
    node: ProviderNode
    supervisor: Supervisor

    async def stop(self) -> None:
        await self.supervisor.stop()
        await self.node.stop()


@dataclass
class Mesh:
    hub: MemoryHub
    ledger: SqliteLedger
    orchestrator: Orchestrator
    nodes: list[RunningNode]
    tmp_path: Path

    async def add_node(self, name: str, price: float, executor: FakeExecutor) -> RunningNode:
        identity = Identity.generate()
        node = ProviderNode(
            actor=Actor(identity=identity, transport=MemoryTransport(self.hub)),
            settings=NodeSettings(
                home=self.tmp_path / name,
                region="eu-west",
                price_per_cpu_hour=price,
                heartbeat_interval_s=0.1,
                latency_peers_per_round=0,
            ),
            hardware=HARDWARE,
            allocations=AllocationRepository(open_database("sqlite://")),
            executors={"process": executor},
            settlement=SqliteLedger.open(self.tmp_path / "ledger.db", identity),
        )
        running = RunningNode(node, Supervisor())
        await node.run(running.supervisor)
        self.nodes.append(running)
        return running


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    hub = MemoryHub()
    consumer, treasury = Identity.generate(), Identity.generate()
    ledger = SqliteLedger.open(
        tmp_path / "ledger.db", consumer, LedgerSettings(treasury=treasury.did)
    )
    ledger.deposit(consumer.did, credits_to_units(10), deposit_id="test-funds")
    orchestrator = Orchestrator(
        actor=Actor(identity=consumer, transport=MemoryTransport(hub)),
        jobs=JobRepository(open_database("sqlite://")),
        settings=SETTINGS,
        ledger=ledger,
    )
    await orchestrator.start()
    mesh = Mesh(hub, ledger, orchestrator, [], tmp_path)
    yield mesh
    await orchestrator.stop()
    for running in mesh.nodes:
        await running.stop()


async def eventually(check: Callable[[], bool], step_s: float = 0.05) -> None:
    """Until ``check()`` holds (the test's timeout bounds the wait)."""
    while True:
        if check():
            return
        await asyncio.sleep(step_s)


def job() -> JobSpec:
    data = {
        "name": "echo",
        "command": ["cat", "in.txt"],
        "inputs": [{"path": "in.txt", "content": "hello mesh"}],
        "outputs": ["out.txt"],
        "timeout_s": 600,
    }
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


async def test_a_node_that_stops_heartbeating_loses_its_job_to_another(mesh: Mesh) -> None:
    stuck = GatedExecutor()
    doomed = await mesh.add_node("cheap", 0.1, stuck)
    spare = await mesh.add_node("dear", 0.2, FakeExecutor())
    await mesh.orchestrator.discover(window_s=0.2)
    run = asyncio.create_task(mesh.orchestrator.run(job(), timeout=30))
    await asyncio.wait_for(stuck.started.wait(), 10)
    first = mesh.orchestrator.jobs.recent()[0]
    (lost,) = first.contracts
    assert lost["terms"]["provider"] == doomed.node.did

    await doomed.stop()  # mid-job: no more heartbeats, no answers
    record = await asyncio.wait_for(run, 30)

    assert (record.status, record.verified) == ("completed", True)
    (result,) = record.results
    assert result["body"]["provider"] == spare.node.did
    events = [entry["event"] for entry in record.history]
    assert events == ["submitted", "placed", "relocated", "placed", "completed"]
    moved = record.history[2]["detail"]
    assert moved["from"] == doomed.node.did
    assert moved["contract_id"] == lost["terms"]["contract_id"]
    assert moved["refunded"] is True and moved["resume_from"] is None
    assert mesh.orchestrator.node_states()[doomed.node.did] is NodeState.DEAD
    lost_record = mesh.orchestrator.verification.reputation.record(doomed.node.did, "process")
    assert lost_record.timeouts == pytest.approx(1.0)  # moved off it: counted against it
    assert mesh.orchestrator.verification.reputation.record(spare.node.did, "process").timeouts == 0

    escrow = mesh.ledger.escrow(lost["terms"]["contract_id"])
    assert escrow.closed and escrow.released == 0 and escrow.refunded == escrow.locked
    assert mesh.ledger.balance(doomed.node.did).available == 0
    assert mesh.ledger.balance(spare.node.did).available > 0
    assert mesh.ledger.verify().ok


async def test_a_dead_node_without_running_jobs_moves_nothing(mesh: Mesh) -> None:
    idle = await mesh.add_node("idle", 0.1, FakeExecutor())
    busy = await mesh.add_node("busy", 0.2, FakeExecutor())
    await mesh.orchestrator.discover(window_s=0.2)
    record = await mesh.orchestrator.run(job(), timeout=10)
    assert record.status == "completed"
    assert await mesh.orchestrator.recovery.relocate_from(busy.node.did) == []
    await idle.stop()
    assert await mesh.orchestrator.recovery.relocate_from(idle.node.did) == []
    again = mesh.orchestrator.jobs.get(record.job_id)
    assert [entry["event"] for entry in again.history] == ["submitted", "placed", "completed"]


async def test_suspect_nodes_are_asked_last_but_still_asked(mesh: Mesh) -> None:
    cheap = await mesh.add_node("cheap", 0.1, FakeExecutor())
    dear = await mesh.add_node("dear", 0.2, FakeExecutor())
    await mesh.orchestrator.discover(window_s=0.2)
    view = mesh.orchestrator.view
    ordered = mesh.orchestrator.candidates(job(), frozenset(), 1)
    assert ordered[0] == cheap.node.did
    await cheap.supervisor.stop()  # silent, not yet dead
    await eventually(lambda: bool(view.suspects()))
    assert view.suspects() == {cheap.node.did}
    assert mesh.orchestrator.candidates(job(), frozenset(), 1) == [dear.node.did, cheap.node.did]


async def test_a_silent_node_that_still_answers_keeps_its_job(mesh: Mesh) -> None:
    stuck = GatedExecutor()
    quiet = await mesh.add_node("quiet", 0.1, stuck)
    await mesh.add_node("spare", 0.2, FakeExecutor())
    await mesh.orchestrator.discover(window_s=0.2)
    job_id = mesh.orchestrator.submit(job())
    (contract,) = await mesh.orchestrator.place(job_id)
    assert contract["terms"]["provider"] == quiet.node.did
    await quiet.supervisor.stop()  # heartbeats stop; the node still answers requests
    await eventually(lambda: mesh.orchestrator.node_states()[quiet.node.did] is NodeState.DEAD)
    assert await mesh.orchestrator.recovery.relocate_from(quiet.node.did) == []
    record = mesh.orchestrator.jobs.get(job_id)
    assert record.contracts == [contract]
    assert "relocated" not in [entry["event"] for entry in record.history]
