"""The "wasm" executor: runs a job's WebAssembly module (WASI preview 1) in wasmtime.

The command convention: ``command[0]`` is the path of the module (``.wasm`` binary or
``.wat`` text) inside the work dir, so one of the job's inputs; ``command`` as a whole
is the guest's argv. The environment is the request's, nothing inherited.

Isolation, by limit (details in ``wasm_run``):

* file system: the work dir only, preopened as ``/work`` and ``.`` (and the checkpoint
  directory as ``/checkpoint`` for a job that checkpoints); nothing else of the host,
  no network; stdin is the input the request names (``ExecutionRequest.stdin``), else
  empty; stdout and stderr go to files in the job dir (outside the work dir) and each is
  read back up to ``max_output_bytes``. While the guest runs, what it adds to them is
  handed to ``handle.on_output`` every ``OUTPUT_POLL_INTERVAL_S`` (``streams.FileTail``),
  and what is left when it ends, before ``wait`` returns;
* CPU: a fuel budget (``ExecutionRequest.fuel``, else ``FUEL_PER_CPU_SECOND`` per
  second of ``cpu_time_s``); running out ends the job "killed", reason "out of fuel";
* memory: linear memory capped at ``memory_mb``;
* wall time and ``stop``: each run has an engine of its own, so incrementing that
  engine's epoch interrupts this job and no other; the wall-time limit is enforced in
  ``wait``;
* disk: the files in the job dir together may not exceed ``max_file_mb``; checked every
  ``DISK_CHECK_INTERVAL_S``, so a fast writer may overshoot by what it writes meanwhile.

Each run happens in a thread of its own, not in asyncio's default pool, so that
long-running guests never starve the node's other blocking work; the same thread reads
the outputs and stdio back when the guest has ended. Compiled modules are
cached by the sha256 of their source (``wasm_cache``). Fuel used ends up in
``usage.fuel``: the same module with the same inputs uses the same fuel and writes the
same bytes on every host, as long as it does not read clocks or random numbers.

Not bounded yet: open files. Each file the guest opens holds a descriptor of the node's
process until the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from computemesh.executor.base import (
    CollectedOutput,
    ExecutionHandle,
    ExecutionRequest,
    ExecutionResult,
    OutputCallback,
    metered_bytes_out,
)
from computemesh.executor.checkpoint import (
    CHECKPOINT_ENV,
    SANDBOX_CHECKPOINT_DIR,
    prepare_checkpoint_dir,
    snapshot,
)
from computemesh.executor.streams import TAIL_BYTES, FileTail
from computemesh.executor.tree_usage import thread_cpu_seconds
from computemesh.executor.wasm_cache import ModuleCache
from computemesh.executor.wasm_module import check_module_shape, new_engine
from computemesh.executor.wasm_outcome import classify_guest
from computemesh.executor.wasm_run import MIB, GuestExit, GuestRun, GuestSetup, fuel_budget
from computemesh.executor.workdir import (
    check_env,
    check_stdin,
    checked_relative_path,
    collect_outputs,
    create_job_dir,
    remove_tree,
    stdin_path,
    write_inputs,
)
from computemesh.models.errors import ExecutionError
from computemesh.models.market import ResourceUsage

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0
DISK_CHECK_INTERVAL_S = 0.1
OUTPUT_POLL_INTERVAL_S = 0.1


@dataclass(frozen=True)
class CapturedStream:
    """The first ``cap`` bytes of a stream file, whether it was longer, and its last bytes."""

    data: bytes
    truncated: bool
    tail: bytes
    total: int = 0


@dataclass(frozen=True)
class FinishedRun:
    """A guest's end with what it left: collected outputs and captured stdio."""

    ended: GuestExit
    outputs: list[CollectedOutput]
    stdout: CapturedStream
    stderr: CapturedStream


@dataclass(eq=False)
class WasmJob:
    """An executor's state for one handle, from ``prepare`` to ``cleanup``."""

    guest: GuestRun
    started: float = 0.0
    future: asyncio.Future[FinishedRun] | None = None
    stopped: bool = False
    timed_out: bool = False
    disk_exceeded: bool = False
    result: ExecutionResult | None = None
    thread: threading.Thread | None = None
    tails: list[FileTail] = field(default_factory=list)
    follower: asyncio.Task[None] | None = None


class WasmExecutor:
    """Runs WASI modules in wasmtime; see the module docstring for the isolation.

    ``cache`` (or a new ``ModuleCache`` over ``cache_dir``, in memory only when None)
    keeps compiled modules. Outputs up to ``max_inline_output_bytes`` come back with
    their bytes. Raises ExecutionError (code "cache_unavailable") when the cache
    directory cannot be created.
    """

    name: str = "wasm"

    def __init__(
        self,
        *,
        cache_dir: Path | None = None,
        cache: ModuleCache | None = None,
        max_inline_output_bytes: int = 256 * 1024,
    ) -> None:
        try:
            self.cache = cache if cache is not None else ModuleCache(cache_dir)
        except OSError as exc:
            raise ExecutionError(
                f"cannot use {cache_dir} for compiled modules: {exc}", code="cache_unavailable"
            ) from exc
        self.max_inline_output_bytes = max_inline_output_bytes
        self._jobs: dict[ExecutionHandle, WasmJob] = {}

    async def prepare(self, request: ExecutionRequest, work_root: Path) -> ExecutionHandle:
        """Write the inputs, then load and check the module: an invalid one (code
        "invalid_module") is refused here, before anything runs."""
        module_path = _check_request(request)
        job_dir, setup = await asyncio.to_thread(self._prepare_job, request, work_root, module_path)
        handle = ExecutionHandle(
            request,
            job_dir=job_dir,
            work_dir=setup.work_dir,
            checkpoint_dir=setup.checkpoint_dir,
        )
        self._jobs[handle] = WasmJob(GuestRun(setup))
        return handle

    async def start(self, handle: ExecutionHandle) -> None:
        job = self._jobs.get(handle)
        if job is None or handle.state != "prepared" or handle.stop_requested:
            raise ExecutionError(f"cannot start a job that is {handle.state}", code="invalid_state")
        loop = asyncio.get_running_loop()
        job.future = loop.create_future()
        job.started = time.monotonic()
        thread = threading.Thread(
            target=_run_guest,
            args=(job.guest, functools.partial(self._read_back, handle), loop, job.future),
            name=f"wasm-{handle.request.job_id}",
            daemon=True,
        )
        thread.start()
        job.thread = thread
        handle.state = "running"
        if handle.on_output is not None:
            job.tails = _output_tails(handle, handle.on_output)
            job.follower = asyncio.create_task(_follow_output(job))

    async def wait(self, handle: ExecutionHandle) -> ExecutionResult:
        job = self._jobs.get(handle)
        if job is None or job.future is None or handle.state not in ("running", "finished"):
            raise ExecutionError(
                f"no run to wait for (job is {handle.state})", code="invalid_state"
            )
        if job.result is not None:
            return job.result
        await self._watch(handle, job)
        finished = await job.future
        await _end_following(job, drain=True)
        if job.result is None:
            job.result = self._result(handle, job, finished)
            handle.state = "finished"
        return job.result

    async def stop(self, handle: ExecutionHandle) -> None:
        handle.stop_requested = True
        job = self._jobs.get(handle)
        if job is None or job.future is None or job.future.done():
            return
        job.stopped = True
        job.guest.interrupt()
        await _settled(job.future)

    async def cleanup(self, handle: ExecutionHandle) -> None:
        if handle.state == "cleaned":
            return
        job = self._jobs.pop(handle, None)
        if job is not None and job.future is not None and not job.future.done():
            job.guest.interrupt()
            await _settled(job.future)
        if job is not None:
            await _end_following(job, drain=False)
        await asyncio.to_thread(remove_tree, handle.job_dir)
        handle.state = "cleaned"

    async def usage(self, handle: ExecutionHandle) -> ResourceUsage:
        """Wall time and the guest thread's CPU time (``/proc``, while it runs)."""
        job = self._jobs.get(handle)
        if job is None or job.thread is None:
            return ResourceUsage(wall_s=0.0, cpu_s=0.0, max_rss_kb=0)
        if job.result is not None:
            return job.result.usage
        wall = max(0.0, time.monotonic() - job.started)
        cpu = await asyncio.to_thread(thread_cpu_seconds, job.thread.native_id or 0)
        return ResourceUsage(wall_s=wall, cpu_s=cpu, max_rss_kb=0)

    async def checkpoint(self, handle: ExecutionHandle) -> bytes:
        return await snapshot(handle)

    # Preparing ----------------------------------------------------------------------------

    def _prepare_job(
        self, request: ExecutionRequest, work_root: Path, module_path: str
    ) -> tuple[Path, GuestSetup]:
        """Make the job dir, write the inputs, load the module (blocking: compiles on a
        cache miss); the job dir is removed again when anything fails."""
        try:
            job_dir, work_dir = create_job_dir(work_root, request.job_id)
        except OSError as exc:
            raise ExecutionError(
                f"cannot prepare the work dir under {work_root}: {exc}", code="prepare_failed"
            ) from exc
        try:
            write_inputs(work_dir, request.inputs, None)
            return job_dir, self._setup(request, job_dir, work_dir, module_path)
        except BaseException:
            remove_tree(job_dir)
            raise

    def _setup(
        self, request: ExecutionRequest, job_dir: Path, work_dir: Path, module_path: str
    ) -> GuestSetup:
        """Load the module for a fresh engine and describe the run."""
        source = _read_module_source(work_dir, module_path)
        engine = new_engine()
        module = self.cache.load(engine, source)
        check_module_shape(module)
        requested = request.fuel
        checkpoint_dir = prepare_checkpoint_dir(job_dir, request, None)
        env = dict(request.env)
        if checkpoint_dir is not None:
            env[CHECKPOINT_ENV] = SANDBOX_CHECKPOINT_DIR
        return GuestSetup(
            engine=engine,
            module=module,
            argv=list(request.command),
            env=env,
            work_dir=work_dir,
            stdin=stdin_path(work_dir, request.stdin),
            stdout=job_dir / "stdout",
            stderr=job_dir / "stderr",
            fuel=fuel_budget(request.limits, requested),
            memory_bytes=request.limits.memory_mb * MIB,
            checkpoint_dir=checkpoint_dir,
        )

    # Running ------------------------------------------------------------------------------

    async def _watch(self, handle: ExecutionHandle, job: WasmJob) -> None:
        """Until the guest ends: interrupt it at the wall-time limit or the disk limit."""
        assert job.future is not None
        limits = handle.request.limits
        deadline = job.started + limits.wall_time_s
        while not job.future.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                job.timed_out = True
                job.guest.interrupt()
                return
            await asyncio.wait({job.future}, timeout=min(remaining, DISK_CHECK_INTERVAL_S))
            if job.future.done():
                return
            written = await asyncio.to_thread(_bytes_under, handle.job_dir)
            if written > limits.max_file_mb * MIB:
                job.disk_exceeded = True
                job.guest.interrupt()
                return

    def _read_back(self, handle: ExecutionHandle, ended: GuestExit) -> FinishedRun:
        """Collect the outputs and the capped stdio of an ended guest (blocking)."""
        request = handle.request
        cap = request.limits.max_output_bytes
        return FinishedRun(
            ended=ended,
            outputs=collect_outputs(handle.work_dir, request.outputs, self.max_inline_output_bytes),
            stdout=read_capped(handle.job_dir / "stdout", cap),
            stderr=read_capped(handle.job_dir / "stderr", cap),
        )

    def _result(
        self, handle: ExecutionHandle, job: WasmJob, finished: FinishedRun
    ) -> ExecutionResult:
        request = handle.request
        ended, stdout, stderr = finished.ended, finished.stdout, finished.stderr
        verdict = classify_guest(
            ended,
            request.limits,
            fuel=job.guest.setup.fuel,
            stopped=job.stopped,
            timed_out=job.timed_out,
            disk_exceeded=job.disk_exceeded,
            stderr=stderr.data + stderr.tail if stderr.truncated else stderr.data,
        )
        return ExecutionResult(
            status=verdict.status,
            reason=verdict.reason,
            exit_code=ended.exit_code,
            stdout=stdout.data,
            stderr=stderr.data,
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            outputs=finished.outputs,
            usage=ResourceUsage(
                wall_s=round(ended.wall_s, 6),
                cpu_s=round(ended.cpu_s, 6),
                max_rss_kb=ended.memory_bytes // 1024,
                fuel=ended.fuel_used,
                bytes_out=metered_bytes_out(stdout.total, stderr.total, finished.outputs),
            ),
        )


def read_capped(path: Path, cap: int) -> CapturedStream:
    """The first ``cap`` bytes of the file at ``path`` and its last ``TAIL_BYTES``.

    A missing file reads as empty; symlinks are not followed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return CapturedStream(b"", False, b"")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(cap)
        size = os.fstat(fd).st_size
        if size <= cap:
            return CapturedStream(data, False, b"", size)
        handle.seek(max(cap, size - TAIL_BYTES))
        return CapturedStream(data, True, handle.read(TAIL_BYTES), size)


def _output_tails(handle: ExecutionHandle, on_output: OutputCallback) -> list[FileTail]:
    return [
        FileTail(handle.job_dir / "stdout", functools.partial(on_output, "stdout")),
        FileTail(handle.job_dir / "stderr", functools.partial(on_output, "stderr")),
    ]


async def _follow_output(job: WasmJob) -> None:
    """Until the guest ends: hand what it adds to stdout and stderr to ``on_output``."""
    assert job.future is not None
    while not job.future.done():
        await asyncio.wait({job.future}, timeout=OUTPUT_POLL_INTERVAL_S)
        for tail in job.tails:
            await tail.poll()


async def _end_following(job: WasmJob, *, drain: bool) -> None:
    """Stop following the guest's output; with ``drain``, hand over what is left first."""
    follower, job.follower = job.follower, None
    if follower is None:
        return
    if not drain:
        follower.cancel()
    await asyncio.wait({follower})
    try:
        if not follower.cancelled() and follower.exception() is not None:
            log.warning("output of a wasm job not followed: %s", follower.exception())
        elif drain:
            for tail in job.tails:
                await tail.drain()
    finally:
        for tail in job.tails:
            tail.close()


def _run_guest(
    guest: GuestRun,
    read_back: Callable[[GuestExit], FinishedRun],
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[FinishedRun],
) -> None:
    """Thread body: run the guest, read back what it left, settle ``future`` on ``loop``."""
    try:
        finished = read_back(guest.run())
    except Exception as exc:
        error = ExecutionError(f"could not run the module: {exc}", code="start_failed")
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, future, None, error)
        return
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, future, finished, None)


def _settle(
    future: asyncio.Future[FinishedRun],
    finished: FinishedRun | None,
    error: BaseException | None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    elif finished is not None:
        future.set_result(finished)


async def _settled(future: asyncio.Future[FinishedRun]) -> None:
    """Wait (up to ``STOP_TIMEOUT_S``) for ``future`` to settle, whatever its outcome."""
    await asyncio.wait({future}, timeout=STOP_TIMEOUT_S)
    if future.done() and not future.cancelled():
        future.exception()


def _check_request(request: ExecutionRequest) -> str:
    """The module's relative path; raises ExecutionError for an unusable request."""
    if not request.command or any("\x00" in part for part in request.command):
        raise ExecutionError("the command is empty or contains NUL bytes", code="invalid_command")
    module_path = checked_relative_path(request.command[0], "module")
    check_env(request.env)
    check_stdin(request)
    for path in request.outputs:
        checked_relative_path(path, "output")
    if request.fuel is not None and request.fuel < 1:
        raise ExecutionError("the fuel budget must be at least 1", code="invalid_fuel")
    return module_path


def _read_module_source(work_dir: Path, module_path: str) -> bytes:
    """The bytes of ``command[0]``, which must be a regular file the inputs put there."""
    try:
        fd = os.open(work_dir / module_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        fd = -1
    if fd < 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd >= 0:
            os.close(fd)
        raise ExecutionError(
            f"command[0] {module_path!r} is not one of the job's input files",
            code="invalid_command",
            hint="give the module (.wasm or .wat) as an input and its path as command[0]",
        )
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _bytes_under(root: Path) -> int:
    """Total size of the regular files under ``root``; symlinks are not followed."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(directory, name))
                if stat.S_ISREG(info.st_mode):
                    total += info.st_size
    return total
