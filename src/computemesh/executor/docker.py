"""The "docker" executor: runs a job's command in a container through the Docker Engine API.

Offered only where an engine answers a ping when the executor is made (``DockerExecutor``
raises ExecutionError code "engine_unreachable" otherwise). Each job's container
(``container_config``, pure, so the mapping is testable without an engine):

* image ``ExecutionRequest.image``, the command as given, the request's environment only;
* no network (``network_mode: none``), except for a job that declares ``network`` on an
  executor made with ``allow_network`` (the engine's default bridge; without it such a
  job is refused in ``prepare``, ExecutionError "network_not_allowed"); read-only root
  file system; all capabilities dropped, ``no-new-privileges``; uid 1000;
* the job's work dir bound read-write at /work (its working directory), its checkpoint
  directory at /checkpoint for a job that checkpoints; a size-capped tmpfs at /tmp;
* memory (no swap beyond it), CPU bandwidth (``cpu_cores``), processes, open files and
  file size from the request's limits;
* killed at the wall-time limit or on ``stop``; stdout and stderr each kept up to
  ``max_output_bytes`` (the rest counted, not kept); CPU time and peak memory from the
  container's stats; removed with the work dir by ``cleanup``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from computemesh.executor.base import (
    CollectedOutput,
    ExecutionHandle,
    ExecutionRequest,
    ExecutionResult,
    check_network_allowed,
    metered_bytes_out,
)
from computemesh.executor.checkpoint import (
    CHECKPOINT_ENV,
    SANDBOX_CHECKPOINT_DIR,
    prepare_checkpoint_dir,
    snapshot,
)
from computemesh.executor.workdir import (
    check_env,
    checked_relative_path,
    collect_outputs,
    create_job_dir,
    remove_tree,
    write_inputs,
)
from computemesh.models.errors import ExecutionError
from computemesh.models.market import ResourceUsage

CONTAINER_UID = "1000:1000"
ENGINE_TIMEOUT_S = 5
MIB = 1024 * 1024


@dataclass(frozen=True)
class CappedLog:
    data: bytes
    total: int

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)


def container_config(handle: ExecutionHandle, *, allow_network: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``containers.create`` (see the module docstring)."""
    request, limits = handle.request, handle.request.limits
    network = request.network and allow_network
    env = dict(request.env)
    volumes = {str(handle.work_dir): {"bind": "/work", "mode": "rw"}}
    if handle.checkpoint_dir is not None:
        env[CHECKPOINT_ENV] = SANDBOX_CHECKPOINT_DIR
        volumes[str(handle.checkpoint_dir)] = {"bind": SANDBOX_CHECKPOINT_DIR, "mode": "rw"}
    file_bytes = limits.max_file_mb * MIB
    return {
        "image": request.image,
        "command": list(request.command),
        "environment": env,
        "working_dir": "/work",
        "user": CONTAINER_UID,
        "network_mode": "bridge" if network else "none",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "volumes": volumes,
        "tmpfs": {"/tmp": f"size={file_bytes},mode=1777"},
        "mem_limit": limits.memory_mb * MIB,
        "memswap_limit": limits.memory_mb * MIB,
        "nano_cpus": int(limits.cpu_cores * 1e9),
        "pids_limit": limits.max_processes,
        "ulimits": [
            {"Name": "nofile", "Soft": limits.max_open_files, "Hard": limits.max_open_files},
            {"Name": "fsize", "Soft": file_bytes, "Hard": file_bytes},
            {"Name": "core", "Soft": 0, "Hard": 0},
        ],
        "labels": {"computemesh.job": request.job_id},
        "detach": True,
    }


def usage_from_stats(stats: dict[str, Any], wall_s: float) -> ResourceUsage:
    """CPU seconds and peak memory from one ``container.stats(stream=False)`` answer."""
    cpu_ns = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0) or 0
    memory = stats.get("memory_stats", {})
    peak = memory.get("max_usage") or memory.get("usage") or 0
    return ResourceUsage(wall_s=wall_s, cpu_s=cpu_ns / 1e9, max_rss_kb=int(peak) // 1024)


class DockerExecutor:
    """Runs jobs in containers; see the module docstring. ``client`` is a docker SDK client."""

    name: str = "docker"

    def __init__(
        self,
        *,
        client: Any = None,
        max_inline_output_bytes: int = 256 * 1024,
        allow_network: bool = False,
    ) -> None:
        self.client = client if client is not None else _reachable_client()
        self.max_inline_output_bytes = max_inline_output_bytes
        self.allow_network = allow_network
        self._containers: dict[ExecutionHandle, Any] = {}
        self._started: dict[ExecutionHandle, float] = {}
        self._results: dict[ExecutionHandle, ExecutionResult] = {}
        self._stopped: set[ExecutionHandle] = set()

    async def prepare(self, request: ExecutionRequest, work_root: Path) -> ExecutionHandle:
        _check_request(request)
        check_network_allowed(request, allowed=self.allow_network)
        job_dir, work_dir = create_job_dir(work_root, request.job_id)
        try:
            write_inputs(work_dir, request.inputs, None)
            checkpoint_dir = prepare_checkpoint_dir(job_dir, request, None)
        except BaseException:
            remove_tree(job_dir)
            raise
        return ExecutionHandle(
            request, job_dir=job_dir, work_dir=work_dir, checkpoint_dir=checkpoint_dir
        )

    async def start(self, handle: ExecutionHandle) -> None:
        if handle.state != "prepared" or handle.stop_requested:
            raise ExecutionError(f"cannot start a job that is {handle.state}", code="invalid_state")
        try:
            container = await asyncio.to_thread(
                self.client.containers.create,
                **container_config(handle, allow_network=self.allow_network),
            )
            self._containers[handle] = container
            await asyncio.to_thread(container.start)
        except Exception as exc:
            handle.state = "finished"
            message = f"the engine refused the container: {exc}"
            raise ExecutionError(message, code="start_failed") from exc
        self._started[handle] = time.monotonic()
        handle.state = "running"

    async def wait(self, handle: ExecutionHandle) -> ExecutionResult:
        container = self._containers.get(handle)
        if container is None:
            raise ExecutionError(
                f"no run to wait for (job is {handle.state})", code="invalid_state"
            )
        if handle in self._results:
            return self._results[handle]
        limits = handle.request.limits
        timed_out = False
        try:
            ended = await asyncio.to_thread(container.wait, timeout=limits.wall_time_s)
        except Exception:
            timed_out = True
            await self._kill(container)
            ended = await asyncio.to_thread(container.wait)
        result = await asyncio.to_thread(self._result, handle, container, ended, timed_out)
        self._results[handle] = result
        handle.state = "finished"
        return result

    async def stop(self, handle: ExecutionHandle) -> None:
        handle.stop_requested = True
        container = self._containers.get(handle)
        if container is not None and handle not in self._results:
            self._stopped.add(handle)
            await self._kill(container)

    async def cleanup(self, handle: ExecutionHandle) -> None:
        if handle.state == "cleaned":
            return
        container = self._containers.pop(handle, None)
        if container is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(container.remove, force=True)
        self._results.pop(handle, None)
        self._started.pop(handle, None)
        self._stopped.discard(handle)
        await asyncio.to_thread(remove_tree, handle.job_dir)
        handle.state = "cleaned"

    async def usage(self, handle: ExecutionHandle) -> ResourceUsage:
        if handle in self._results:
            return self._results[handle].usage
        container = self._containers.get(handle)
        started = self._started.get(handle)
        if container is None or started is None:
            return ResourceUsage(wall_s=0.0, cpu_s=0.0, max_rss_kb=0)
        return await asyncio.to_thread(_stats_usage, container, time.monotonic() - started)

    async def checkpoint(self, handle: ExecutionHandle) -> bytes:
        return await snapshot(handle)

    async def _kill(self, container: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(container.kill)

    def _result(
        self, handle: ExecutionHandle, container: Any, ended: dict[str, Any], timed_out: bool
    ) -> ExecutionResult:
        limits = handle.request.limits
        wall = time.monotonic() - self._started.get(handle, time.monotonic())
        stdout = _capped_log(container, limits.max_output_bytes, stdout=True)
        stderr = _capped_log(container, limits.max_output_bytes, stdout=False)
        code = int(ended.get("StatusCode", 255))
        outputs: list[CollectedOutput] = collect_outputs(
            handle.work_dir, handle.request.outputs, self.max_inline_output_bytes
        )
        status, reason = _verdict(code, timed_out, handle in self._stopped, limits.wall_time_s)
        usage = _stats_usage(container, wall)
        bytes_out = metered_bytes_out(stdout.total, stderr.total, outputs)
        return ExecutionResult(
            status=status,
            reason=reason,
            exit_code=code if status in ("completed", "failed") else None,
            stdout=stdout.data,
            stderr=stderr.data,
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            outputs=outputs,
            usage=usage.model_copy(update={"bytes_out": bytes_out}),
        )


def _verdict(code: int, timed_out: bool, stopped: bool, wall_time_s: float) -> tuple[Any, str]:
    if stopped:
        return "killed", "stopped before it finished"
    if timed_out:
        return "timeout", f"exceeded wall time limit of {float(wall_time_s)} s"
    if code == 137:
        return "killed", "killed by signal 9 (SIGKILL): memory limit or the engine"
    if code == 0:
        return "completed", "exited with code 0"
    return "failed", f"exited with code {code}"


def _capped_log(container: Any, cap: int, *, stdout: bool) -> CappedLog:
    kept, total = bytearray(), 0
    for chunk in container.logs(stdout=stdout, stderr=not stdout, stream=True):
        total += len(chunk)
        room = cap - len(kept)
        if room > 0:
            kept += chunk[:room]
    return CappedLog(bytes(kept), total)


def _stats_usage(container: Any, wall_s: float) -> ResourceUsage:
    try:
        stats = container.stats(stream=False)
    except Exception:
        stats = {}
    return usage_from_stats(stats if isinstance(stats, dict) else {}, wall_s)


def _check_request(request: ExecutionRequest) -> None:
    if not request.image:
        raise ExecutionError("a docker job names its image", code="invalid_command")
    if not request.command or any("\x00" in part for part in request.command):
        raise ExecutionError("the command is empty or contains NUL bytes", code="invalid_command")
    check_env(request.env)
    for path in request.outputs:
        checked_relative_path(path, "output")
    if request.stdin is not None:
        raise ExecutionError("the docker executor gives jobs no stdin", code="invalid_stdin")


def _reachable_client() -> Any:
    """A client for the engine the environment names, once it answered a ping."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=ENGINE_TIMEOUT_S)
        client.ping()
    except Exception as exc:
        raise ExecutionError(
            f"no Docker engine reachable: {exc}",
            code="engine_unreachable",
            hint="start dockerd or set DOCKER_HOST",
        ) from exc
    return client
