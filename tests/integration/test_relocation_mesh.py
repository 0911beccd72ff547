"""A provider process SIGKILLed mid-job on a real local mesh: the consumer's failure detector
declares it dead, the job completes on the other node, the move is in the job's history and
the lost contract's escrow is refunded."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from computemesh.app.consumer import consumer_session
from computemesh.app.home import MeshHome
from computemesh.app.localmesh import mesh_down, mesh_up
from computemesh.models.job import JobSpec
from computemesh.orchestrator import OrchestratorSettings
from computemesh.orchestrator.liveness import NodeState
from computemesh.orchestrator.specfile import resolve_inputs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.timeout(180),
]

SETTINGS = OrchestratorSettings(bid_window_s=1.0, placement_timeout_s=30, fetch_interval_s=1.0)
JOB_TIMEOUT_S = 600
AWAIT_S = 45.0
"""How long the consumer waits for the outcome after the kill: detection (about 5 s), a new
placement and the run, well under the job's own timeout."""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshHome, dict[str, Any]]]:
    home = MeshHome(tmp_path_factory.mktemp("relocation-mesh"))
    state = mesh_up(home, nodes=2)
    yield home, state
    mesh_down(home)


def sleeper() -> JobSpec:
    data = {
        "name": "sleeper",
        "command": ["sh", "-c", "sleep 3; echo done > out.txt"],
        "outputs": ["out.txt"],
        "timeout_s": JOB_TIMEOUT_S,
    }
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


async def test_a_killed_provider_s_job_completes_on_another_node(
    mesh: tuple[MeshHome, dict[str, Any]],
) -> None:
    home, state = mesh
    async with consumer_session(home, state["nats_url"], settings=SETTINGS) as orchestrator:
        await orchestrator.discover(window_s=1.0)
        job_id = orchestrator.submit(sleeper())
        (contract,) = await orchestrator.place(job_id)
        lost = contract["terms"]
        victim = next(node for node in state["nodes"] if node["did"] == lost["provider"])
        os.kill(victim["pid"], signal.SIGKILL)

        record = await orchestrator.await_outcome(job_id, timeout=AWAIT_S)
        states = orchestrator.node_states()
        payments = orchestrator.payments

    assert record.status == "completed", record.reason
    (result,) = record.results
    assert result["body"]["provider"] != lost["provider"]
    assert result["body"]["exit_code"] == 0
    assert states[lost["provider"]] is NodeState.DEAD
    events = [entry["event"] for entry in record.history]
    assert events == ["submitted", "placed", "relocated", "placed", "completed"]
    moved = record.history[2]["detail"]
    assert (moved["from"], moved["contract_id"]) == (lost["provider"], lost["contract_id"])
    assert payments is not None  # a local mesh has a ledger
    assert moved["refunded"] is True
    escrow = payments.ledger.escrow(lost["contract_id"])
    assert escrow.closed and escrow.released == 0 and escrow.refunded == escrow.locked
