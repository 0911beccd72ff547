"""Latency measured over the in-memory mesh: real nodes ping each other and advertise their
round trips per region; the orchestrator indexes them, uses them for ensembles' latency
bounds, and measures its own round trips to the candidates it asks."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from computemesh.actor import Actor, Supervisor, behaviours
from computemesh.identity import Identity
from computemesh.matching import match_job
from computemesh.models.errors import RemoteError
from computemesh.models.job import JobSpec
from computemesh.models.market import Hardware
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.ensembles import load_ensemble_spec
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.store import AllocationRepository, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from tests.fakes import FakeExecutor

pytestmark = pytest.mark.timeout(60)

SETTINGS = OrchestratorSettings(
    bid_window_s=0.3, placement_timeout_s=2.0, fetch_interval_s=0.3, region="eu-west"
)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)
REGIONS = ("eu-west", "eu-west", "us-east")


@dataclass
class Mesh:
    nodes: list[ProviderNode]
    supervisors: list[Supervisor]
    orchestrator: Orchestrator


def make_node(hub: MemoryHub, home: Path, region: str) -> ProviderNode:
    return ProviderNode(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
        settings=NodeSettings(
            home=home,
            region=region,
            latency_probe_interval_s=0.1,
            latency_peers_per_round=2,
        ),
        hardware=HARDWARE,
        allocations=AllocationRepository(open_database("sqlite://")),
        executors={"process": FakeExecutor()},
    )


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    hub = MemoryHub()
    orchestrator = Orchestrator(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
        jobs=JobRepository(open_database("sqlite://")),
        settings=SETTINGS,
    )
    await orchestrator.start()
    nodes = [make_node(hub, tmp_path / f"n{i}", region) for i, region in enumerate(REGIONS)]
    supervisors = [Supervisor() for _ in nodes]
    for node, supervisor in zip(nodes, supervisors, strict=True):
        await node.run(supervisor)
    yield Mesh(nodes, supervisors, orchestrator)
    await orchestrator.stop()
    for node, supervisor in zip(nodes, supervisors, strict=True):
        await supervisor.stop()
        await node.stop()


async def eventually(check: Callable[[], bool], step_s: float = 0.05) -> None:
    """Until ``check()`` holds (the test's timeout bounds the wait)."""
    while True:
        if check():
            return
        await asyncio.sleep(step_s)


def peer_regions(mesh: Mesh, node: ProviderNode) -> set[str]:
    return {other.settings.region for other in mesh.nodes if other is not node}


async def indexed_latencies(mesh: Mesh) -> dict[str, dict[str, float]]:
    """Wait until every node is indexed reporting latency to each region of its peers."""
    wanted = {node.did: peer_regions(mesh, node) for node in mesh.nodes}
    while True:
        index = mesh.orchestrator.view.index
        reported = {did: index.advertisement(did).latency_ms for did in index.providers()}
        if {did: set(latency) for did, latency in reported.items()} == wanted:
            return reported
        await asyncio.sleep(0.05)


async def test_nodes_advertise_what_they_measured_and_the_index_uses_it(mesh: Mesh) -> None:
    reported = await asyncio.wait_for(indexed_latencies(mesh), 20)
    for node in mesh.nodes:
        latency = node.advertisement().latency_ms
        # Its own region only when it has a peer there: the lone us-east node has none.
        assert set(latency) == peer_regions(mesh, node) == set(reported[node.did])
        assert all(0 <= rtt < 60_000 for rtt in latency.values())
    index = mesh.orchestrator.view.index
    estimates = index.region_latency()
    west, east = index.regions.find("eu-west"), index.regions.find("us-east")
    assert math.isfinite(estimates[west, west])
    assert math.isfinite(estimates[west, east]) and estimates[west, east] == estimates[east, west]
    assert math.isinf(estimates[east, east])  # nobody there measured its own region


async def test_an_ensemble_with_a_latency_bound_is_placed_on_measured_figures(
    mesh: Mesh,
) -> None:
    await asyncio.wait_for(indexed_latencies(mesh), 20)
    document = {
        "name": "pair",
        "allocations": [
            {"name": name, "command": ["echo", name], "constraints": {"regions": [region]}}
            for name, region in (("front", "eu-west"), ("back", "us-east"))
        ],
        "latency": [{"a": "front", "b": "back", "max_rtt_ms": 10_000}],
    }
    outcome = await mesh.orchestrator.deploy_ensemble(load_ensemble_spec(document, Path(".")))
    assert outcome.status == "completed", outcome.reason
    regions = {node.did: node.settings.region for node in mesh.nodes}
    assert {name: regions[did] for name, did in outcome.providers.items()} == {
        "front": "eu-west",
        "back": "us-east",
    }


async def test_the_orchestrator_measures_its_own_round_trips_to_candidates(mesh: Mesh) -> None:
    await asyncio.wait_for(indexed_latencies(mesh), 20)
    spec = resolve_inputs(
        JobSpec.model_validate(
            {
                "name": "near",
                "command": ["echo", "hi"],
                "constraints": {"preferences": {"near": "eu-west", "latency": 1.0}},
            }
        ),
        Path("."),
    )
    record = await mesh.orchestrator.run(spec, timeout=10)
    assert record.status == "completed"
    view = mesh.orchestrator.view
    dids = [node.did for node in mesh.nodes]
    await eventually(lambda: not view.rtt_unknown(dids, time.monotonic()))
    index = view.index
    for node in mesh.nodes:
        rtt = view.rtt_of(node.did, time.monotonic())
        assert rtt is not None
        row = index.row_of(node.did)
        assert row is not None
        assert index.latency.columns[index.regions.find("eu-west")][row] == rtt
    (best, *_) = match_job(index, spec, limit=3)
    assert best.breakdown.qualities["latency"] > 0


async def test_pings_are_answered_and_bad_ones_refused(mesh: Mesh) -> None:
    actor = mesh.orchestrator.actor
    node = mesh.nodes[0].did
    reply = await actor.request(node, behaviours.PING, {"sent_ms": 5}, timeout=2)
    assert reply == {"sent_ms": 5}
    with pytest.raises(RemoteError) as refused:
        await actor.request(node, behaviours.PING, {"sent_ms": "soon"}, timeout=2)
    assert refused.value.code == "bad_ping"
