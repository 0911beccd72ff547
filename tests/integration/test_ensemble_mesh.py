"""An ensemble on a real local mesh: nats-server and three node processes under bubblewrap."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from computemesh.app.consumer import consumer_session
from computemesh.app.home import MeshHome
from computemesh.app.localmesh import mesh_down, mesh_up
from computemesh.models.ensemble import EnsembleSpec
from computemesh.models.market import Advertisement
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.ensembles import load_ensemble_spec
from computemesh.orchestrator.liveness import NodeState

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

SETTINGS = OrchestratorSettings(bid_window_s=2.0, placement_timeout_s=30)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshHome, dict[str, Any]]]:
    home = MeshHome(tmp_path_factory.mktemp("ensemble-mesh"))
    state = mesh_up(home, nodes=3)
    yield home, state
    mesh_down(home)


def trio() -> EnsembleSpec:
    names = ["ingest", "train", "serve"]
    document = {
        "name": "pipeline",
        "allocations": [
            {
                "name": name,
                "command": ["sh", "-c", f"echo {name} > out.txt"],
                "outputs": ["out.txt"],
            }
            for name in names
        ],
        "spread": [names],
    }
    return load_ensemble_spec(document, Path("."))


async def test_three_allocations_complete_on_three_distinct_providers(
    mesh: tuple[MeshHome, dict[str, Any]],
) -> None:
    home, state = mesh
    node_dids = {node["did"] for node in state["nodes"]}
    async with consumer_session(home, state["nats_url"], settings=SETTINGS) as orchestrator:
        found = await orchestrator.discover(window_s=1.0)
        assert set(found) == node_dids
        outcome = await orchestrator.deploy_ensemble(trio(), timeout=60)
        states = orchestrator.node_states()
    assert outcome.status == "completed", outcome.reason
    assert set(outcome.providers.values()) == node_dids
    for name, record in outcome.records.items():
        assert record.status == "completed"
        assert record.verified is True
        (result,) = record.results
        assert result["body"]["provider"] == outcome.providers[name]
        assert result["body"]["exit_code"] == 0
    assert all(states[did] is NodeState.ALIVE for did in node_dids)


async def test_nodes_advertise_measured_latency_and_a_bounded_ensemble_uses_it(
    mesh: tuple[MeshHome, dict[str, Any]],
) -> None:
    home, state = mesh
    regions = {node["did"]: node["region"] for node in state["nodes"]}
    async with consumer_session(home, state["nats_url"], settings=SETTINGS) as orchestrator:
        found = await measured_adverts(orchestrator, set(regions))
        for did, advert in found.items():
            others = {region for peer, region in regions.items() if peer != did}
            assert set(advert.latency_ms) == others  # one node per region: no own-region peer
            assert all(0 <= rtt < 1_000 for rtt in advert.latency_ms.values())  # loopback
        west, east = sorted(set(regions.values()))[:2]
        outcome = await orchestrator.deploy_ensemble(bounded_pair(west, east), timeout=60)
    assert outcome.status == "completed", outcome.reason
    placed = {name: regions[did] for name, did in outcome.providers.items()}
    assert placed == {"front": west, "back": east}


async def measured_adverts(
    orchestrator: Orchestrator, dids: set[str], attempts: int = 30
) -> dict[str, Advertisement]:
    """Discover until every node advertises latency to each of the others' regions."""
    for _ in range(attempts):
        found = await orchestrator.discover(window_s=1.0)
        if set(found) == dids and all(len(a.latency_ms) == len(dids) - 1 for a in found.values()):
            return found
    raise AssertionError("the nodes never advertised measured latencies")


def bounded_pair(west: str, east: str) -> EnsembleSpec:
    """Two allocations in two regions, at most 250 ms apart: placeable only on measurements."""
    document = {
        "name": "pair",
        "allocations": [
            {
                "name": name,
                "command": ["sh", "-c", f"echo {name} > out.txt"],
                "outputs": ["out.txt"],
                "constraints": {"regions": [region]},
            }
            for name, region in (("front", west), ("back", east))
        ],
        "latency": [{"a": "front", "b": "back", "max_rtt_ms": 250}],
    }
    return load_ensemble_spec(document, Path("."))
