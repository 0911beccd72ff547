"""The docker executor without an engine: the container a request becomes, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from computemesh.executor.base import ExecutionHandle, ExecutionRequest, SandboxLimits
from computemesh.executor.docker import DockerExecutor, container_config, usage_from_stats
from computemesh.models.errors import ExecutionError

LIMITS = SandboxLimits(
    wall_time_s=30, cpu_time_s=30, memory_mb=512, max_processes=32, max_file_mb=64, cpu_cores=1.5
)


def handle(tmp_path: Path, checkpoint: bool = False) -> ExecutionHandle:
    request = ExecutionRequest(
        job_id="j1",
        command=["python", "-c", "print(1)"],
        env={"MODE": "fast"},
        inputs=[],
        outputs=[],
        limits=LIMITS,
        image="python:3.12-slim",
        checkpointing=checkpoint,
    )
    return ExecutionHandle(
        request,
        job_dir=tmp_path,
        work_dir=tmp_path / "work",
        checkpoint_dir=tmp_path / "checkpoint" if checkpoint else None,
    )


def test_request_becomes_a_locked_down_container(tmp_path: Path) -> None:
    config = container_config(handle(tmp_path))
    assert config["image"] == "python:3.12-slim"
    assert config["command"] == ["python", "-c", "print(1)"]
    assert config["environment"] == {"MODE": "fast"}
    assert config["network_mode"] == "none"
    assert config["read_only"] is True
    assert config["cap_drop"] == ["ALL"]
    assert config["security_opt"] == ["no-new-privileges"]
    assert config["mem_limit"] == config["memswap_limit"] == 512 * 1024 * 1024
    assert config["nano_cpus"] == 1_500_000_000
    assert config["pids_limit"] == 32
    assert config["volumes"] == {str(tmp_path / "work"): {"bind": "/work", "mode": "rw"}}
    assert config["working_dir"] == "/work"
    assert {"Name": "fsize", "Soft": 64 << 20, "Hard": 64 << 20} in config["ulimits"]


def test_checkpointing_job_sees_its_directory(tmp_path: Path) -> None:
    config = container_config(handle(tmp_path, checkpoint=True))
    assert config["environment"]["CMESH_CHECKPOINT_DIR"] == "/checkpoint"
    assert config["volumes"][str(tmp_path / "checkpoint")] == {
        "bind": "/checkpoint",
        "mode": "rw",
    }


def test_usage_comes_from_the_container_stats() -> None:
    stats = {
        "cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}},
        "memory_stats": {"max_usage": 10 * 1024 * 1024},
    }
    usage = usage_from_stats(stats, wall_s=3.0)
    assert (usage.cpu_s, usage.max_rss_kb, usage.wall_s) == (2.5, 10 * 1024, 3.0)


def test_without_a_reachable_engine_the_executor_is_not_offered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(ExecutionError) as caught:
        DockerExecutor()
    assert caught.value.code == "engine_unreachable"


async def test_a_job_without_an_image_is_refused(tmp_path: Path) -> None:
    request = handle(tmp_path).request
    executor = DockerExecutor(client=object())
    with pytest.raises(ExecutionError, match="image"):
        await executor.prepare(
            ExecutionRequest(**{**request.__dict__, "image": None}), tmp_path / "root"
        )


async def test_a_job_with_stdin_is_refused(tmp_path: Path) -> None:
    request = handle(tmp_path).request
    executor = DockerExecutor(client=object())
    with_stdin = {**request.__dict__, "inputs": [("in.txt", b"x", False)], "stdin": "in.txt"}
    with pytest.raises(ExecutionError) as caught:
        await executor.prepare(ExecutionRequest(**with_stdin), tmp_path / "root")
    assert caught.value.code == "invalid_stdin"
