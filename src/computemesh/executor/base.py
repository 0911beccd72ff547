"""The executor contract: how a provider node runs one job and gets its result back.

An executor takes a job through five steps, each an ``await``:

    prepare   make a private work directory under ``work_root`` and write the inputs
    start     launch the job (in a sandbox, for the process executor)
    wait      wait for it to end, enforcing the wall-time limit, and collect the result
    stop      kill the whole process tree (idempotent; safe at any step)
    cleanup   remove the work directory (stopping the job first if it still runs)

``run_to_completion`` chains them and makes sure that cancellation stops the job.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from computemesh.models.market import ResourceUsage, ResultStatus

HandleState = Literal["prepared", "running", "finished", "cleaned"]


@dataclass(frozen=True)
class SandboxLimits:
    """Limits one job runs under.

    ``max_output_bytes`` caps stdout and stderr each: bytes beyond it are read and
    discarded (counted, never kept), and the result says the stream was truncated.
    ``max_processes`` bounds the processes (threads, as Linux counts them) the job may
    have at once; ``max_file_mb`` bounds the size of any one file it writes.
    """

    wall_time_s: float
    cpu_time_s: float
    memory_mb: int
    max_processes: int = 64
    max_open_files: int = 256
    max_file_mb: int = 256
    max_output_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.wall_time_s <= 0 or self.cpu_time_s <= 0:
            raise ValueError("wall_time_s and cpu_time_s must be positive")
        positive = (self.memory_mb, self.max_processes, self.max_open_files, self.max_file_mb)
        if min(positive) < 1:
            raise ValueError("memory_mb, max_processes, max_open_files, max_file_mb must be >= 1")
        if self.max_output_bytes < 0:
            raise ValueError("max_output_bytes must not be negative")


@dataclass(frozen=True)
class ExecutionRequest:
    """One job as an executor sees it.

    ``inputs`` are ``(relative path, content, executable)``; ``outputs`` are relative
    paths collected from the work directory after the run. Both must stay inside the
    work directory (``prepare`` refuses any that would not). ``fuel`` is the job's own
    budget for executors that meter it (wasm); others ignore it.
    """

    job_id: str
    command: list[str]
    env: dict[str, str]
    inputs: list[tuple[str, bytes, bool]]
    outputs: list[str]
    limits: SandboxLimits
    fuel: int | None = None


@dataclass(frozen=True)
class CollectedOutput:
    """A declared output found after the run: a regular file inside the work directory.

    ``data`` is None when the file is larger than the executor's inline limit; the hash
    and size always describe the whole file.
    """

    path: str
    sha256: str
    size: int
    data: bytes | None


@dataclass(frozen=True)
class ExecutionResult:
    """How a job ended.

    ``status`` is "completed" (exit 0), "failed" (non-zero exit, or a signal no limit
    explains), "timeout" (wall-time limit) or "killed" (stopped, or a limit such as
    memory or CPU time ended it). ``reason`` says why in words; ``exit_code`` is None
    when the job did not exit by itself.
    """

    status: ResultStatus
    reason: str
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    outputs: list[CollectedOutput]
    usage: ResourceUsage


@dataclass(eq=False)
class ExecutionHandle:
    """One job's run from ``prepare`` to ``cleanup``, owned by the executor that made it.

    Handles compare and hash by identity. ``job_dir`` is private to the executor and
    removed by ``cleanup``; ``work_dir`` (inside it) is the job's working directory.
    ``run_as_uid`` is the host uid the job runs as, or None for the node's own uid.
    """

    request: ExecutionRequest
    job_dir: Path
    work_dir: Path
    run_as_uid: int | None = None
    state: HandleState = "prepared"
    stop_requested: bool = False


class Executor(Protocol):
    """Runs jobs; ``name`` is what providers advertise (e.g. "process")."""

    name: str

    async def prepare(self, request: ExecutionRequest, work_root: Path) -> ExecutionHandle:
        """Create a private work dir under ``work_root`` and write the inputs into it.

        Raises ExecutionError when a path would leave the work directory or the request
        is otherwise unusable.
        """
        ...

    async def start(self, handle: ExecutionHandle) -> None:
        """Launch the job; raises ExecutionError when it cannot be launched."""
        ...

    async def wait(self, handle: ExecutionHandle) -> ExecutionResult:
        """Wait for the job to end and return its result.

        Enforces the wall-time limit: on timeout the whole process tree is killed and
        the status is "timeout". Calling it again returns the same result.
        """
        ...

    async def stop(self, handle: ExecutionHandle) -> None:
        """Kill the whole process tree; does nothing when it is not running."""
        ...

    async def cleanup(self, handle: ExecutionHandle) -> None:
        """Stop the job if it still runs and remove its work directory; idempotent."""
        ...


async def run_to_completion(
    executor: Executor, request: ExecutionRequest, work_root: Path
) -> ExecutionResult:
    """Prepare, start and wait for a job, then clean up.

    Whatever interrupts the run (cancellation included) stops the job's process tree
    before the exception propagates; the work directory is always removed.
    """
    handle = await executor.prepare(request, work_root)
    try:
        await executor.start(handle)
        return await executor.wait(handle)
    except BaseException:
        await asyncio.shield(executor.stop(handle))
        raise
    finally:
        await asyncio.shield(executor.cleanup(handle))
