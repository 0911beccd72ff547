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
from computemesh.orchestrator import OrchestratorSettings
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
