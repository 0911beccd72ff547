"""Placement over the node index on an in-memory mesh: directed bids, queueing, liveness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from computemesh.actor import Actor, Inbound, behaviours
from computemesh.executor import ExecutionResult
from computemesh.identity import Identity
from computemesh.models.ensemble import EnsembleSpec
from computemesh.models.errors import NoProviderError
from computemesh.models.job import JobSpec
from computemesh.models.market import Hardware, Heartbeat
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.liveness import LivenessBounds, NodeState
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.store import AllocationRepository, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from tests.fakes import FakeExecutor, FakeHandle

SETTINGS = OrchestratorSettings(
    bid_window_s=2.0,
    placement_timeout_s=0.5,
    queue_retry_s=0.2,
    suspect_after_s=30.0,
    dead_after_s=60.0,
    sweep_interval_s=0.05,
)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)
REGIONS = ("eu-west", "us-east", "ap-south")


@dataclass
class GatedExecutor(FakeExecutor):
    """A fake executor whose runs finish only once ``gate`` is set."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, handle: FakeHandle) -> ExecutionResult:
        await self.gate.wait()
        return await super().wait(handle)


@dataclass
class Mesh:
    hub: MemoryHub
    nodes: list[ProviderNode]
    orchestrator: Orchestrator
    asked: dict[str, int]
    """Bid requests each node handled (direct or broadcast)."""


def make_node(hub: MemoryHub, home: Path, region: str) -> ProviderNode:
    return ProviderNode(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
        settings=NodeSettings(home=home, region=region),
        hardware=HARDWARE,
        allocations=AllocationRepository(open_database("sqlite://")),
        executors={"process": GatedExecutor()},
    )


def count_bid_requests(node: ProviderNode, asked: dict[str, int]) -> None:
    async def counting(inbound: Inbound) -> None:
        if node.did not in inbound.payload.get("asked", []):
            asked[node.did] = asked.get(node.did, 0) + 1
        await node.on_bid_request(inbound)

    node.actor.register(behaviours.BID_REQUEST, counting)


async def start_mesh(tmp_path: Path, *, discover: bool) -> Mesh:
    hub = MemoryHub()
    asked: dict[str, int] = {}
    nodes = [make_node(hub, tmp_path / region, region) for region in REGIONS]
    for node in nodes:
        count_bid_requests(node, asked)
        await node.start()
    orchestrator = Orchestrator(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
        jobs=JobRepository(open_database("sqlite://")),
        settings=SETTINGS,
    )
    await orchestrator.start()
    if discover:
        await orchestrator.discover(window_s=0.2)
    return Mesh(hub, nodes, orchestrator, asked)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    mesh = await start_mesh(tmp_path, discover=True)
    yield mesh
    await stop_mesh(mesh)


async def stop_mesh(mesh: Mesh) -> None:
    for node in mesh.nodes:
        open_gate(node)
    await mesh.orchestrator.stop()
    for node in mesh.nodes:
        await node.stop()


def open_gate(node: ProviderNode) -> None:
    executor = node.executors.get("process")
    if isinstance(executor, GatedExecutor):
        executor.gate.set()


def job(name: str = "probe", **overrides: object) -> JobSpec:
    data = {"name": name, "command": ["true"], **overrides}
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


def node_in(mesh: Mesh, region: str) -> ProviderNode:
    return next(node for node in mesh.nodes if node.settings.region == region)


async def test_bid_requests_go_only_to_indexed_candidates(mesh: Mesh) -> None:
    target = node_in(mesh, "us-east")
    open_gate(target)
    record = await mesh.orchestrator.run(job(constraints={"regions": ["us-east"]}), timeout=5)
    assert record.status == "completed"
    assert record.contracts[0]["terms"]["provider"] == target.did
    assert mesh.asked == {target.did: 1}


async def test_candidates_are_bounded_by_replicas_times_the_factor(mesh: Mesh) -> None:
    spec = job()
    chosen = mesh.orchestrator.candidates(spec, frozenset(), 1)
    assert len(chosen) == 3  # every node fits; 1 x 4 allows up to four
    narrow = OrchestratorSettings(candidate_factor=1)
    mesh.orchestrator.settings = narrow
    assert mesh.orchestrator.candidates(spec, frozenset(), 2) == chosen[:2]
    assert chosen[0] not in mesh.orchestrator.candidates(spec, frozenset(chosen[:1]), 1)


async def test_nodes_not_indexed_are_reached_by_broadcast_and_indexed_from_bids(
    tmp_path: Path,
) -> None:
    mesh = await start_mesh(tmp_path, discover=False)
    try:
        for node in mesh.nodes:
            open_gate(node)
        assert mesh.orchestrator.known_nodes == {}
        record = await mesh.orchestrator.run(job(), timeout=5)
        assert record.status == "completed"
        assert set(mesh.asked) == {node.did for node in mesh.nodes}
        assert set(mesh.orchestrator.known_nodes) == {node.did for node in mesh.nodes}
    finally:
        await stop_mesh(mesh)


async def test_a_job_no_node_fits_is_explained_per_constraint(mesh: Mesh) -> None:
    spec = job(resources={"memory_mb": 100_000}, constraints={"regions": ["eu-west"]})
    job_id = mesh.orchestrator.submit(spec)
    with pytest.raises(NoProviderError) as caught:
        await mesh.orchestrator.place(job_id)
    reasons = caught.value.reasons
    assert "index: memory removes 3 of 3 node(s), 0 left after it" in reasons
    assert "index: region removes 2 of 3 node(s), 0 left after it" in reasons
    assert sum("memory: needs 100000 MB, node has 4096 MB" in line for line in reasons) >= 3
    assert mesh.orchestrator.jobs.get(job_id).status == "no_provider"
    assert mesh.orchestrator.queue_position(job_id) is None


async def test_short_capacity_queues_the_job_until_a_result_frees_it(mesh: Mesh) -> None:
    only = node_in(mesh, "eu-west")
    where = {"constraints": {"regions": ["eu-west"]}, "resources": {"cpu": 2}}
    orchestrator = mesh.orchestrator
    first = orchestrator.submit(job("first", **where))
    assert len(await orchestrator.place(first)) == 1
    low = orchestrator.submit(job("low", **where))
    high = orchestrator.submit(job("high", priority=5, **where))
    assert await orchestrator.place(low) == []
    assert await orchestrator.place(high) == []
    for queued in (low, high):
        record = orchestrator.jobs.get(queued)
        assert record.status == "queued"
        assert "cpu: needs 2, 0 free now" in record.reason
    assert orchestrator.queue_position(high) == 1
    assert orchestrator.queue_position(low) == 2
    open_gate(only)
    done = await orchestrator.await_outcome(high, timeout=10)
    assert done.status == "completed"
    assert orchestrator.jobs.get(first).status == "completed"
    finished = await orchestrator.await_outcome(low, timeout=10)
    assert finished.status == "completed"
    placed_at = [record.contracts[0]["terms"]["created_at_ms"] for record in (done, finished)]
    assert placed_at == sorted(placed_at)  # the higher priority was placed first
    assert orchestrator.jobs.queue.ordered() == []


async def test_a_silent_node_turns_suspect_then_dead_and_leaves_the_index(mesh: Mesh) -> None:
    dead: list[str] = []
    mesh.orchestrator.on_node_dead.append(dead.append)
    # Bounds well above the beat interval: a loaded machine may stall the loop for a while.
    mesh.orchestrator.view.liveness.bounds = LivenessBounds(suspect_after_s=1.0, dead_after_s=2.0)
    beating = mesh.nodes[0]
    quiet = {node.did for node in mesh.nodes[1:]}
    sender = beating.actor
    beat = Heartbeat(seq=1, free=beating.ledger.free(), running=0).model_dump(mode="json")
    for _ in range(200):
        await sender.broadcast(behaviours.TOPIC_HEARTBEATS, behaviours.HEARTBEAT, beat)
        await asyncio.sleep(0.05)
        if set(dead) == quiet:
            break
    states = mesh.orchestrator.node_states()
    assert states[beating.did] is NodeState.ALIVE
    assert {did for did, state in states.items() if state is NodeState.DEAD} == quiet
    assert sorted(dead) == sorted(quiet)
    assert set(mesh.orchestrator.known_nodes) == {beating.did}


async def test_a_heartbeat_from_a_node_not_indexed_brings_its_advertisement(
    tmp_path: Path,
) -> None:
    mesh = await start_mesh(tmp_path, discover=False)
    try:
        node = mesh.nodes[0]
        beat = Heartbeat(seq=1, free=node.ledger.free(), running=0).model_dump(mode="json")
        await node.actor.broadcast(behaviours.TOPIC_HEARTBEATS, behaviours.HEARTBEAT, beat)
        for _ in range(50):
            if node.did in mesh.orchestrator.known_nodes:
                break
            await asyncio.sleep(0.02)
        assert set(mesh.orchestrator.known_nodes) == {node.did}
    finally:
        await stop_mesh(mesh)


def ensemble(count: int) -> EnsembleSpec:
    names = [f"part-{number}" for number in range(count)]
    return EnsembleSpec(
        name="trio",
        allocations=[job(name) for name in names],
        spread=[names],
    )


async def test_an_ensemble_runs_each_allocation_on_a_distinct_provider(mesh: Mesh) -> None:
    for node in mesh.nodes:
        open_gate(node)
    outcome = await mesh.orchestrator.deploy_ensemble(ensemble(3), timeout=10)
    assert outcome.status == "completed"
    assert len(set(outcome.providers.values())) == 3
    for name, record in outcome.records.items():
        assert record.status == "completed"
        assert record.contracts[0]["terms"]["provider"] == outcome.providers[name]


async def test_an_ensemble_no_placement_fits_is_refused_with_reasons(mesh: Mesh) -> None:
    with pytest.raises(NoProviderError) as caught:
        await mesh.orchestrator.deploy_ensemble(ensemble(4), timeout=10)
    assert caught.value.reasons
    assert mesh.orchestrator.jobs.recent() == []


async def test_a_refusing_member_releases_the_whole_ensemble(mesh: Mesh) -> None:
    refusing = mesh.nodes[0]
    refusing.executors = {}
    outcome = await mesh.orchestrator.deploy_ensemble(ensemble(3), timeout=10)
    assert outcome.status == "failed"
    assert "sandbox" in outcome.reason
    assert {record.status for record in outcome.records.values()} <= {"failed", "no_provider"}
    assert all(not record.contracts for record in outcome.records.values())
    assert mesh.orchestrator.view.promised() == {}
