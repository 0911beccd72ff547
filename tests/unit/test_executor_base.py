"""run_to_completion drives any executor and always stops and cleans up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from computemesh.executor import (
    ExecutionHandle,
    ExecutionRequest,
    ExecutionResult,
    Executor,
    SandboxLimits,
    run_to_completion,
)
from computemesh.models.errors import ExecutionError
from computemesh.models.market import ResourceUsage

REQUEST = ExecutionRequest(
    job_id="j1",
    command=["true"],
    env={},
    inputs=[],
    outputs=[],
    limits=SandboxLimits(wall_time_s=1, cpu_time_s=1, memory_mb=64),
)
RESULT = ExecutionResult(
    status="completed",
    reason="exited with code 0",
    exit_code=0,
    stdout=b"",
    stderr=b"",
    stdout_truncated=False,
    stderr_truncated=False,
    outputs=[],
    usage=ResourceUsage(wall_s=0.1, cpu_s=0.0, max_rss_kb=0),
)


class RecordingExecutor:
    """Records the calls it gets; ``wait`` blocks or fails on demand."""

    name = "recording"

    def __init__(self, *, block: bool = False, fail_start: bool = False) -> None:
        self.calls: list[str] = []
        self.block = block
        self.fail_start = fail_start
        self.waiting = asyncio.Event()

    async def prepare(self, request: ExecutionRequest, work_root: Path) -> ExecutionHandle:
        self.calls.append("prepare")
        return ExecutionHandle(request, job_dir=work_root / "j", work_dir=work_root / "j" / "w")

    async def start(self, handle: ExecutionHandle) -> None:
        self.calls.append("start")
        if self.fail_start:
            raise ExecutionError("cannot launch", code="sandbox_failed")

    async def wait(self, handle: ExecutionHandle) -> ExecutionResult:
        self.calls.append("wait")
        self.waiting.set()
        if self.block:
            await asyncio.Event().wait()
        return RESULT

    async def stop(self, handle: ExecutionHandle) -> None:
        self.calls.append("stop")

    async def cleanup(self, handle: ExecutionHandle) -> None:
        self.calls.append("cleanup")


def test_recording_executor_satisfies_the_protocol() -> None:
    executor: Executor = RecordingExecutor()
    assert executor.name == "recording"


async def test_normal_run(tmp_path: Path) -> None:
    executor = RecordingExecutor()
    assert await run_to_completion(executor, REQUEST, tmp_path) is RESULT
    assert executor.calls == ["prepare", "start", "wait", "cleanup"]


async def test_failed_start_stops_and_cleans_up(tmp_path: Path) -> None:
    executor = RecordingExecutor(fail_start=True)
    with pytest.raises(ExecutionError):
        await run_to_completion(executor, REQUEST, tmp_path)
    assert executor.calls == ["prepare", "start", "stop", "cleanup"]


async def test_cancellation_stops_the_job_and_propagates(tmp_path: Path) -> None:
    executor = RecordingExecutor(block=True)
    task = asyncio.create_task(run_to_completion(executor, REQUEST, tmp_path))
    await asyncio.wait_for(executor.waiting.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert executor.calls == ["prepare", "start", "wait", "stop", "cleanup"]
