"""A stateful counter in a real sandbox, stopped half way on one node, resumes on another.

Real nats-server, two provider processes running jobs under bubblewrap, a consumer
session in this process. The counter (examples/scripts/counter.py) keeps its state in
CMESH_CHECKPOINT_DIR; its live log tells how far it got before its node was stopped.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
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
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.transport import is_process_alive

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

COUNTER = Path(__file__).resolve().parents[2] / "examples" / "scripts" / "counter.py"
SETTINGS = OrchestratorSettings(bid_window_s=1.0, placement_timeout_s=30)
TARGET, STEP_S, INTERVAL_S = 40, 0.1, 0.5


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshHome, dict[str, Any]]]:
    home = MeshHome(tmp_path_factory.mktemp("mesh"))
    state = mesh_up(home, nodes=2)
    yield home, state
    mesh_down(home)


def counter_spec() -> JobSpec:
    data = {
        "name": "counter",
        "command": ["python3", "counter.py", str(TARGET), str(STEP_S)],
        "inputs": [{"path": "counter.py", "source": str(COUNTER)}],
        "outputs": ["total.txt"],
        "checkpoint": {"interval_s": INTERVAL_S},
        "timeout_s": 60,
    }
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


def logged(orchestrator: Orchestrator, job_id: str) -> str:
    return "".join(chunk.data for chunk in orchestrator.jobs.logs.after(job_id, limit=100_000))


def steps_in(text: str) -> list[int]:
    return [int(number) for number in re.findall(r"^step (\d+)$", text, re.MULTILINE)]


async def wait_for_step(orchestrator: Orchestrator, job_id: str, step: int) -> None:
    for _ in range(600):
        if max(steps_in(logged(orchestrator, job_id)), default=0) >= step:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the counter never reached step {step}")


async def wait_exit(pid: int) -> None:
    for _ in range(400):
        if not is_process_alive(pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"node process {pid} did not stop")


async def test_counter_resumes_on_another_node_losing_at_most_one_interval(
    mesh: tuple[MeshHome, dict[str, Any]],
) -> None:
    home, state = mesh
    async with consumer_session(home, state["nats_url"], settings=SETTINGS) as orchestrator:
        await orchestrator.discover(window_s=0.5)
        job_id = orchestrator.submit(counter_spec())
        (contract,) = await orchestrator.place(job_id)
        first = contract["terms"]["provider"]
        await wait_for_step(orchestrator, job_id, TARGET // 2)

        node = next(item for item in state["nodes"] if item["did"] == first)
        os.kill(node["pid"], signal.SIGTERM)
        await wait_exit(node["pid"])
        reached = max(steps_in(logged(orchestrator, job_id)))
        assert reached < TARGET
        assert orchestrator.jobs.checkpoints.latest(job_id) is not None

        (second,) = await orchestrator.resume(job_id, exclude=[first])
        assert second["terms"]["provider"] != first
        record = await orchestrator.await_outcome(job_id, timeout=60)

    assert record.status == "completed", record.reason
    (result,) = record.results
    body = result["body"]
    (output,) = body["outputs"]
    assert base64.b64decode(output["content_b64"]) == f"{TARGET * (TARGET + 1) // 2}\n".encode()
    resumed_at = int(re.findall(r"^resumed at step (\d+)$", body["stdout"], re.MULTILINE)[0])
    assert reached - resumed_at <= INTERVAL_S / STEP_S + 1
    assert steps_in(body["stdout"]) == list(range(resumed_at + 1, TARGET + 1))
    assert body["usage"]["bytes_out"] >= len(body["stdout"]) + output["size"]
