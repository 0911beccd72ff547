"""The executor contract: how a provider node runs one job and gets its result back.

An executor takes a job through five steps, each an ``await``:

    prepare   make a private work directory under ``work_root`` and write the inputs
    start     launch the job (in a sandbox, for the process executor)
    wait      wait for it to end, enforcing the wall-time limit, and collect the result
    stop      kill the whole process tree (idempotent; safe at any step)
    cleanup   remove the work directory (stopping the job first if it still runs)

and, for a job that checkpoints, ``checkpoint`` at any time between ``start`` and
``cleanup``: the deterministic archive of its checkpoint directory (``checkpoint.py``),
which ``prepare`` created and filled from ``ExecutionRequest.restore``.

``run_to_completion`` chains them and makes sure that cancellation stops the job; its
``RunObserver``s see the output as it arrives, run beside the job and see it end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from computemesh.models.errors import ExecutionError
from computemesh.models.job import RuntimeSpec
from computemesh.models.market import ResourceUsage, ResultStatus

log = logging.getLogger(__name__)

HandleState = Literal["prepared", "running", "finished", "cleaned"]
OutputStream = Literal["stdout", "stderr"]
OutputCallback = Callable[[OutputStream, bytes], None]


@dataclass(frozen=True)
class SandboxLimits:
    """Limits one job runs under.

    ``max_output_bytes`` caps stdout and stderr each: bytes beyond it are read and
    discarded (counted, never kept), and the result says the stream was truncated.
    ``max_processes`` bounds the processes (threads, as Linux counts them) the job may
    have at once; ``max_file_mb`` bounds the size of any one file it writes.
    ``cpu_cores`` is the CPU bandwidth a job's cgroup allows, where cgroups are used.
    """

    wall_time_s: float
    cpu_time_s: float
    memory_mb: int
    max_processes: int = 64
    max_open_files: int = 256
    max_file_mb: int = 256
    max_output_bytes: int = 64 * 1024
    cpu_cores: float = 1.0

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
    budget for executors that meter it (wasm); others ignore it. ``checkpointing`` gives
    the job a checkpoint directory (``CMESH_CHECKPOINT_DIR``), filled from the archive
    ``restore`` before it starts. ``image`` is the container image (docker only).
    ``network`` asks for network access, which executors give only where the node allows
    it and refuse otherwise. ``runtime`` is the Python runtime the job declares (process
    jobs: bound for it, see ``python_runtime``). ``stdin`` names one of the inputs as the
    job's standard input (process and wasm; empty when None).
    """

    job_id: str
    command: list[str]
    env: dict[str, str]
    inputs: list[tuple[str, bytes, bool]]
    outputs: list[str]
    limits: SandboxLimits
    fuel: int | None = None
    checkpointing: bool = False
    restore: bytes | None = None
    image: str | None = None
    network: bool = False
    runtime: RuntimeSpec | None = None
    stdin: str | None = None


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
    ``checkpoint_dir`` is the job's checkpoint directory, when it checkpoints;
    ``on_output``, set before ``start``, is called with each chunk of output as it arrives
    by executors that can see output while the job runs.
    """

    request: ExecutionRequest
    job_dir: Path
    work_dir: Path
    run_as_uid: int | None = None
    state: HandleState = "prepared"
    stop_requested: bool = False
    checkpoint_dir: Path | None = None
    on_output: OutputCallback | None = None


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

    async def usage(self, handle: ExecutionHandle) -> ResourceUsage:
        """The resources the run has used so far: wall time since it started and the CPU
        time of everything it runs, as metered for billing (what a checkpoint is signed
        with). Zero before ``start``; once the job ended, its result's usage.
        """
        ...

    async def checkpoint(self, handle: ExecutionHandle) -> bytes:
        """The deterministic archive of the job's checkpoint directory, as it is now.

        Raises ExecutionError: code "no_checkpoint" for a job without one (or already
        cleaned up), "checkpoint_too_large" past the archive bound.
        """
        ...


class RunObserver(Protocol):
    """Watches one run of ``run_to_completion``.

    ``output`` is called (on the event loop, so it must not block) with each chunk of
    output as it arrives; ``running`` runs beside the job and is cancelled when it ends;
    ``ended`` is awaited once the job has ended or was stopped, before its directory is
    removed (the moment for a last checkpoint). Errors in ``running`` and ``ended`` are
    logged, never raised into the run.
    """

    def output(self, stream: OutputStream, chunk: bytes) -> None: ...

    async def running(self, handle: ExecutionHandle) -> None: ...

    async def ended(self, handle: ExecutionHandle) -> None: ...


async def run_to_completion(
    executor: Executor,
    request: ExecutionRequest,
    work_root: Path,
    observers: Sequence[RunObserver] = (),
) -> ExecutionResult:
    """Prepare, start and wait for a job, then clean up.

    Whatever interrupts the run (cancellation included) stops the job's process tree
    before the exception propagates; the observers then see it end, and the work
    directory is always removed.
    """
    handle = await executor.prepare(request, work_root)
    try:
        if observers:
            handle.on_output = _fan_out(observers)
        await executor.start(handle)
        return await _wait_observed(executor, handle, observers)
    except BaseException:
        await asyncio.shield(executor.stop(handle))
        raise
    finally:
        try:
            for observer in observers:
                await asyncio.shield(_observe_end(observer, handle))
        finally:
            await asyncio.shield(executor.cleanup(handle))


async def _wait_observed(
    executor: Executor, handle: ExecutionHandle, observers: Sequence[RunObserver]
) -> ExecutionResult:
    watchers = [asyncio.create_task(_observe_running(item, handle)) for item in observers]
    try:
        return await executor.wait(handle)
    finally:
        for watcher in watchers:
            watcher.cancel()
        for watcher in watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def _observe_running(observer: RunObserver, handle: ExecutionHandle) -> None:
    try:
        await observer.running(handle)
    except Exception:
        log.exception("observer of job %s failed while it ran", handle.request.job_id)


async def _observe_end(observer: RunObserver, handle: ExecutionHandle) -> None:
    try:
        await observer.ended(handle)
    except Exception:
        log.exception("observer of job %s failed when it ended", handle.request.job_id)


def _fan_out(observers: Sequence[RunObserver]) -> OutputCallback:
    def deliver(stream: OutputStream, chunk: bytes) -> None:
        for observer in observers:
            observer.output(stream, chunk)

    return deliver


NETWORK_HINT = "run it on a node started with --allow-network"


def check_network_allowed(request: ExecutionRequest, *, allowed: bool) -> None:
    """Raise ExecutionError "network_not_allowed" for a job that needs network access
    from an executor that may not give it."""
    if request.network and not allowed:
        raise ExecutionError(
            "the job needs network access and this node does not allow it",
            code="network_not_allowed",
            hint=NETWORK_HINT,
        )


def metered_bytes_out(
    stdout_bytes: int, stderr_bytes: int, outputs: Sequence[CollectedOutput]
) -> int:
    """Bytes a job produced for its consumer: all its stdout and stderr (kept or not) and
    the declared output files it left (checkpoints are added by the node)."""
    return stdout_bytes + stderr_bytes + sum(item.size for item in outputs)
