"""The docker executor against a real engine; skipped where none is reachable."""

from __future__ import annotations

from pathlib import Path

import pytest

from computemesh.executor.base import ExecutionRequest, SandboxLimits, run_to_completion
from computemesh.executor.docker import DockerExecutor
from computemesh.models.errors import ExecutionError


def engine() -> DockerExecutor | None:
    try:
        return DockerExecutor()
    except ExecutionError:
        return None


EXECUTOR = engine()
IMAGE = "busybox:latest"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(EXECUTOR is None, reason="no Docker engine is reachable on this machine"),
]


def request(command: list[str], **limits: float) -> ExecutionRequest:
    return ExecutionRequest(
        job_id="docker-probe",
        command=command,
        env={},
        inputs=[("in.txt", b"hello", False)],
        outputs=["out.txt"],
        limits=SandboxLimits(**{"wall_time_s": 30, "cpu_time_s": 30, "memory_mb": 64, **limits}),
        image=IMAGE,
    )


async def test_container_runs_with_its_work_dir_and_no_network(tmp_path: Path) -> None:
    assert EXECUTOR is not None
    result = await run_to_completion(
        EXECUTOR, request(["sh", "-c", "cp in.txt out.txt; ping -c1 -W1 1.1.1.1"]), tmp_path
    )
    assert result.status == "failed"
    assert [item.data for item in result.outputs] == [b"hello"]


async def test_wall_time_limit_kills_the_container(tmp_path: Path) -> None:
    assert EXECUTOR is not None
    result = await run_to_completion(EXECUTOR, request(["sleep", "60"], wall_time_s=1), tmp_path)
    assert result.status == "timeout"
