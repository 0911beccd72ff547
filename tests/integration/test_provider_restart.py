"""A provider process SIGKILLed mid-job and started again on a real local mesh, before the
failure detector could declare it dead: the restarted node signs the allocation it lost as
interrupted, the consumer moves the job to the other node, and the lost contract's escrow
is refunded, not paid."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from computemesh.app.consumer import consumer_session
from computemesh.app.home import MeshHome
from computemesh.app.localmesh import mesh_down, mesh_up, restart_node
from computemesh.models.job import JobSpec
from computemesh.node.provider import INTERRUPTED_REASON
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.store import AllocationRepository, open_database, sqlite_url
from tests.integration.meshproc import chaos

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.timeout(180),
]

# The node comes back long before it could be declared dead: the interrupted result, not
# the failure detector, is what moves the job.
SETTINGS = OrchestratorSettings(
    bid_window_s=1.0,
    placement_timeout_s=30,
    fetch_interval_s=1.0,
    suspect_after_s=60.0,
    dead_after_s=120.0,
)
AWAIT_S = 90.0


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[MeshHome, dict[str, Any]]]:
    home = MeshHome(tmp_path / "home")
    state = mesh_up(home, nodes=2)
    yield home, state
    mesh_down(home)


def sleeper() -> JobSpec:
    data = {
        "name": "sleeper",
        "command": ["sh", "-c", "sleep 5; echo done > out.txt"],
        "outputs": ["out.txt"],
        "timeout_s": 600,
    }
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


def stored_allocation(node: dict[str, Any], contract_id: str) -> dict[str, Any] | None:
    settings = NodeSettings(home=Path(node["home"]))
    allocations = AllocationRepository(open_database(sqlite_url(settings.database_path)))
    record = allocations.get(contract_id)
    assert record is not None, "the node stored the allocation before countersigning"
    return record.result


async def test_a_restarted_provider_reports_its_lost_run_and_the_job_moves(
    mesh: tuple[MeshHome, dict[str, Any]],
) -> None:
    home, state = mesh
    async with consumer_session(home, state["nats_url"], settings=SETTINGS) as orchestrator:
        await orchestrator.discover(window_s=1.0)
        job_id = orchestrator.submit(sleeper())
        (contract,) = await orchestrator.place(job_id)
        lost = contract["terms"]
        victim = next(node for node in state["nodes"] if node["did"] == lost["provider"])
        chaos.kill(victim["pid"])  # SIGKILL, then wait until it is gone
        await asyncio.to_thread(restart_node, home, victim["name"])

        record = await orchestrator.await_outcome(job_id, timeout=AWAIT_S)
        payments = orchestrator.payments

    assert record.status == "completed", record.reason
    (result,) = record.results
    assert result["body"]["provider"] != lost["provider"]
    assert result["body"]["exit_code"] == 0
    moved = [entry["detail"] for entry in record.history if entry["event"] == "relocated"]
    assert [(move["from"], move["contract_id"]) for move in moved] == [
        (lost["provider"], lost["contract_id"])
    ]

    interrupted = stored_allocation(victim, lost["contract_id"])
    assert interrupted is not None
    assert interrupted["body"]["provider"] == lost["provider"]
    assert interrupted["body"]["status"] == "failed"
    assert interrupted["body"]["reason"] == INTERRUPTED_REASON

    assert payments is not None  # a local mesh has a ledger
    escrow = payments.ledger.escrow(lost["contract_id"])
    assert escrow.closed and escrow.released == 0 and escrow.refunded == escrow.locked
