"""The "process" executor: runs a job's command as a process tree, normally in bubblewrap.

Isolation, by limit (details in ``sandbox``, ``launch`` and ``limits``):

* file system, network, other processes: a bubblewrap sandbox (``sandbox.py``); the job
  sees /usr and a few /etc entries read-only, its work dir at /work, private /tmp and
  no network but its own loopback. A job that declares ``network`` gets the host's
  network only from an executor made with ``allow_network``; any other refuses it in
  ``prepare`` (ExecutionError "network_not_allowed");
* privileges: on root nodes the job runs under a host uid of its own (and as uid 1000
  of a user namespace under bwrap), never as root; ``no_new_privs`` is set;
* memory, CPU time, processes, open files, file size: rlimits set before exec; where
  the node can create cgroups (``cgroups``), also a group per job bounding the memory and
  processes of the whole job and its CPU bandwidth;
* wall time: enforced here; on timeout or ``stop`` the whole tree is killed: the job's
  first process, which is the init of the sandbox's pid namespace (so every process of
  the job dies with it), then bwrap's process group; on root nodes every process left
  under the job's uid as well (the sweep also runs after every normal exit);
* input: stdin is the input the request names (``ExecutionRequest.stdin``), else empty;
* output: stdout and stderr are each kept up to ``max_output_bytes``; the rest is read
  and dropped, so a job printing without end costs the node neither memory nor disk;
  every chunk is shown to ``handle.on_output`` as it arrives;
* checkpoints: a job that checkpoints sees its checkpoint directory at /checkpoint
  (``CMESH_CHECKPOINT_DIR``), restored before start; ``checkpoint`` archives it.

``ro_binds`` adds host paths every job sees read-only; each is checked by
``sandbox.check_read_only_bind`` when the executor is made. ``runtime`` is the Python
runtime (``python_runtime``) given to the jobs that declare one: its interpreter and
packages are bound read-only for those jobs only, its interpreter's directory leads
``PATH`` (so ``python3`` is that interpreter) and ``PYTHONPATH`` names its packages. A
job whose declared runtime this one does not meet is refused in ``prepare``
(ExecutionError "runtime_missing", one sentence per unmet part). Without a sandbox the
binds are ignored: the job sees the host as it is, ``PYTHONPATH`` the host site dirs.

``sandbox=False`` (nodes started with ``--insecure-no-sandbox``) runs the command
directly in the work dir with the same rlimits, uid switch and process-group kill, but
with the host's file system and network in view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from computemesh.executor.base import (
    CollectedOutput,
    ExecutionHandle,
    ExecutionRequest,
    ExecutionResult,
    check_network_allowed,
    metered_bytes_out,
)
from computemesh.executor.cgroups import JobCgroup, create_job_cgroup, detect_cgroups
from computemesh.executor.checkpoint import (
    CHECKPOINT_DIR_NAME,
    CHECKPOINT_ENV,
    prepare_checkpoint_dir,
    snapshot,
)
from computemesh.executor.launch import (
    STAGING_MOUNTPOINT,
    JobUidPool,
    LaunchPlan,
    can_switch_uid,
    kill_uid_processes,
    make_preexec,
    memory_files,
    reachable_by_others,
    user_task_count,
)
from computemesh.executor.limits import SANDBOX_OVERHEAD_PROCESSES, rlimits_for
from computemesh.executor.outcome import classify, decode_wait_status
from computemesh.executor.python_runtime import PythonRuntime, unmet_runtime
from computemesh.executor.running import RunningJob, child_pid_from_info, usage_from
from computemesh.executor.sandbox import (
    SANDBOX_CHECKPOINT_DIR,
    SANDBOX_PATH,
    HostLayout,
    ReadOnlyBind,
    SandboxConfig,
    build_bwrap_argv,
    check_read_only_bind,
    detect_host_layout,
    find_bwrap,
    sandbox_env,
    synthetic_etc_files,
    tmpfs_bytes_for,
)
from computemesh.executor.streams import ChildExit
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

SANDBOX_MISSING_HINT = "install bubblewrap or start the node with --insecure-no-sandbox"
SANDBOX_FAILED_HINT = "check that bubblewrap works on this host (user namespaces enabled)"
SANDBOX_START_TIMEOUT_S = 10.0
DRAIN_GRACE_S = 2.0
STOP_TIMEOUT_S = 10.0

_JOB_UIDS = JobUidPool()


class ProcessExecutor:
    """Runs jobs as local process trees; see the module docstring for the isolation.

    Raises ExecutionError (code "sandbox_missing") when ``sandbox`` is True and no
    bubblewrap executable is found, and (code "invalid_bind") for a ``ro_binds`` entry
    that ``check_read_only_bind`` refuses. Outputs up to ``max_inline_output_bytes``
    come back with their bytes.
    """

    name: str = "process"

    def __init__(
        self,
        *,
        sandbox: bool = True,
        bwrap_path: str | None = None,
        max_inline_output_bytes: int = 256 * 1024,
        ro_binds: Sequence[ReadOnlyBind] = (),
        use_cgroups: bool = True,
        allow_network: bool = False,
        runtime: PythonRuntime | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.allow_network = allow_network
        self.runtime = runtime
        self.cgroups = detect_cgroups() if use_cgroups else None
        self._groups: dict[ExecutionHandle, JobCgroup] = {}
        self.max_inline_output_bytes = max_inline_output_bytes
        self.ro_binds = _checked_binds(ro_binds)
        self._runtime_binds = _checked_binds(runtime.binds()) if runtime is not None else ()
        self.bwrap: str | None = None
        self._layout: HostLayout | None = None
        if sandbox:
            self.bwrap = find_bwrap(bwrap_path)
            if self.bwrap is None:
                raise ExecutionError(
                    "bubblewrap (bwrap) was not found",
                    code="sandbox_missing",
                    hint=SANDBOX_MISSING_HINT,
                )
            self._layout = detect_host_layout()
        self._runs: dict[ExecutionHandle, RunningJob] = {}

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The runtime labels this executor offers jobs (see ``python_runtime``)."""
        return self.runtime.offers() if self.runtime is not None else ()

    async def prepare(self, request: ExecutionRequest, work_root: Path) -> ExecutionHandle:
        _check_request(request)
        self._check_permissions(request)
        uid = _JOB_UIDS.acquire() if can_switch_uid() else None
        try:
            job_dir, work_dir, checkpoint_dir = await asyncio.to_thread(
                _make_work_dir, request, work_root, uid
            )
        except OSError as exc:
            if uid is not None:
                _JOB_UIDS.release(uid)
            raise ExecutionError(
                f"cannot prepare the work dir under {work_root}: {exc}", code="prepare_failed"
            ) from exc
        except BaseException:
            if uid is not None:
                _JOB_UIDS.release(uid)
            raise
        return ExecutionHandle(
            request,
            job_dir=job_dir,
            work_dir=work_dir,
            run_as_uid=uid,
            checkpoint_dir=checkpoint_dir,
        )

    def _check_permissions(self, request: ExecutionRequest) -> None:
        """Refuse a job that wants network this executor does not allow, or a runtime it
        does not offer."""
        check_network_allowed(request, allowed=self.allow_network)
        if request.runtime is not None:
            unmet = unmet_runtime(request.runtime, self.runtimes, self.name)
            if unmet:
                raise ExecutionError("; ".join(unmet), code="runtime_missing")

    async def start(self, handle: ExecutionHandle) -> None:
        if handle.state != "prepared" or handle.stop_requested:
            raise ExecutionError(f"cannot start a job that is {handle.state}", code="invalid_state")
        run = self._launch(handle)
        self._runs[handle] = run
        handle.state = "running"
        if run.info is not None:
            await self._await_sandbox(handle, run)

    async def wait(self, handle: ExecutionHandle) -> ExecutionResult:
        run = self._runs.get(handle)
        if run is None or handle.state not in ("running", "finished"):
            raise ExecutionError(
                f"no run to wait for (job is {handle.state})", code="invalid_state"
            )
        if run.result is not None:
            return run.result
        limits = handle.request.limits
        remaining = max(0.0, run.started + limits.wall_time_s - time.monotonic())
        done, _ = await asyncio.wait({run.exit.future}, timeout=remaining)
        if not done:
            run.timed_out = True
            run.kill_tree()
        ended = await run.exit.future
        await self._finish_tree(handle, run)
        outputs = await asyncio.to_thread(
            collect_outputs, handle.work_dir, handle.request.outputs, self.max_inline_output_bytes
        )
        if run.result is None:
            run.result = self._result(handle, run, ended, outputs)
            handle.state = "finished"
        return run.result

    async def stop(self, handle: ExecutionHandle) -> None:
        handle.stop_requested = True
        run = self._runs.get(handle)
        if run is None or run.exited:
            return
        run.stopped = True
        run.kill_tree()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(run.exit.future), STOP_TIMEOUT_S)

    async def cleanup(self, handle: ExecutionHandle) -> None:
        if handle.state == "cleaned":
            return
        run = self._runs.pop(handle, None)
        if run is not None:
            if not run.exited:
                run.kill_tree()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(run.exit.future), STOP_TIMEOUT_S)
            run.close()
        if handle.run_as_uid is not None:
            await asyncio.to_thread(kill_uid_processes, handle.run_as_uid)
            _JOB_UIDS.release(handle.run_as_uid)
        group = self._groups.pop(handle, None)
        if group is not None:
            await asyncio.to_thread(group.remove)
        await asyncio.to_thread(remove_tree, handle.job_dir)
        handle.state = "cleaned"

    async def usage(self, handle: ExecutionHandle) -> ResourceUsage:
        run = self._runs.get(handle)
        if run is None:
            return ResourceUsage(wall_s=0.0, cpu_s=0.0, max_rss_kb=0)
        if run.result is not None:
            return run.result.usage
        ended = run.exit.future
        if ended.done():
            if ended.cancelled() or ended.exception() is not None:
                return ResourceUsage(wall_s=0.0, cpu_s=0.0, max_rss_kb=0)
            return usage_from(ended.result(), run.started)
        return await asyncio.to_thread(run.usage_so_far)

    async def checkpoint(self, handle: ExecutionHandle) -> bytes:
        return await snapshot(handle)

    # Launching ----------------------------------------------------------------------------

    def _launch(self, handle: ExecutionHandle) -> RunningJob:
        """Spawn the job (bwrap, or the command itself) with its pipes and limits."""
        plan = self._plan(handle)
        stdin_fd = _open_stdin(handle)
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        parent_fds = {"stdout": stdout_r, "stderr": stderr_r}
        child_fds = [stdin_fd, stdout_w, stderr_w]
        try:
            argv, cwd, env, passed = self._command(handle, plan, parent_fds, child_fds)
            popen = subprocess.Popen(
                argv,
                stdin=stdin_fd,
                stdout=stdout_w,
                stderr=stderr_w,
                cwd=cwd,
                env=env,
                pass_fds=passed,
                start_new_session=True,
                preexec_fn=make_preexec(plan),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in parent_fds.values():
                os.close(fd)
            raise self._launch_error(handle, plan, exc) from exc
        finally:
            for fd in child_fds:
                os.close(fd)
        return RunningJob(
            popen, parent_fds, handle.request.limits.max_output_bytes, handle.on_output
        )

    def _plan(self, handle: ExecutionHandle) -> LaunchPlan:
        uid = handle.run_as_uid
        extra = SANDBOX_OVERHEAD_PROCESSES if self.sandbox else 0
        if uid is None:
            extra += user_task_count(os.getuid())
        staged = self.sandbox and uid is not None and not reachable_by_others(handle.work_dir)
        group = self._job_cgroup(handle, extra)
        return LaunchPlan(
            rlimits=rlimits_for(handle.request.limits, extra_processes=extra),
            uid=uid,
            staged_job_dir=str(handle.job_dir) if staged else None,
            cgroup_procs=group.procs_files if group is not None else (),
        )

    def _job_cgroup(self, handle: ExecutionHandle, extra_processes: int) -> JobCgroup | None:
        """A cgroup for the job where the node has them; None (rlimits only) otherwise."""
        if self.cgroups is None:
            return None
        limits = handle.request.limits
        try:
            group = create_job_cgroup(
                self.cgroups,
                handle.request.job_id,
                memory_mb=limits.memory_mb,
                processes=limits.max_processes + extra_processes,
                cpu_cores=limits.cpu_cores,
            )
        except OSError as exc:
            log.warning("job %s runs without a cgroup: %s", handle.request.job_id, exc)
            return None
        self._groups[handle] = group
        return group

    def _command(
        self,
        handle: ExecutionHandle,
        plan: LaunchPlan,
        parent_fds: dict[str, int],
        child_fds: list[int],
    ) -> tuple[list[str], str, dict[str, str], list[int]]:
        """``(argv, cwd, env, fds to pass)``; records the descriptors it opens."""
        request = handle.request
        runtime = self.runtime if request.runtime is not None else None
        if self.bwrap is None or self._layout is None:
            job_env = _job_env(handle, handle.checkpoint_dir, runtime, sandboxed=False)
            env = sandbox_env(job_env, home=str(handle.work_dir))
            return list(request.command), str(handle.work_dir), env, []
        info_r, info_w = os.pipe()
        parent_fds["info"] = info_r
        child_fds.append(info_w)
        network = request.network and self.allow_network
        data_fds = memory_files(synthetic_etc_files(network=network), child_fds)
        job_dir = STAGING_MOUNTPOINT if plan.staged_job_dir else str(handle.job_dir)
        checkpoint = SANDBOX_CHECKPOINT_DIR if handle.checkpoint_dir is not None else None
        config = SandboxConfig(
            bwrap=self.bwrap,
            work_source=f"{job_dir}/{handle.work_dir.name}",
            checkpoint_source=f"{job_dir}/{CHECKPOINT_DIR_NAME}" if checkpoint else None,
            command=request.command,
            env=sandbox_env(_job_env(handle, checkpoint, runtime, sandboxed=True)),
            layout=self._layout,
            tmpfs_bytes=tmpfs_bytes_for(request.limits),
            info_fd=info_w,
            data_fds=data_fds,
            ro_binds=(*self.ro_binds, *(self._runtime_binds if runtime is not None else ())),
            share_network=network,
        )
        return build_bwrap_argv(config), "/", {}, [info_w, *data_fds.values()]

    def _launch_error(
        self, handle: ExecutionHandle, plan: LaunchPlan, exc: BaseException
    ) -> ExecutionError:
        handle.state = "finished"
        if not self.sandbox:
            command = handle.request.command[0]
            return ExecutionError(f"cannot run {command!r}: {exc}", code="spawn_failed")
        if plan.staged_job_dir is not None and isinstance(exc, subprocess.SubprocessError):
            return ExecutionError(
                f"could not give the sandbox its work dir: {exc}",
                code="sandbox_failed",
                hint="make the parent directories of the work root searchable by other users "
                "(chmod o+x), or give the node CAP_SYS_ADMIN",
            )
        return ExecutionError(
            f"could not launch the sandbox: {exc}", code="sandbox_failed", hint=SANDBOX_FAILED_HINT
        )

    async def _await_sandbox(self, handle: ExecutionHandle, run: RunningJob) -> None:
        """Wait until bwrap reports its sandbox running; raise if it never does."""
        assert run.info is not None
        await run.info.wait_closed(SANDBOX_START_TIMEOUT_S)
        pid = child_pid_from_info(run.info.data)
        if pid is not None:
            with contextlib.suppress(OSError):
                run.init_pidfd = os.pidfd_open(pid)
            return
        run.kill_tree()
        await run.exit.future
        await run.stderr.wait_closed(DRAIN_GRACE_S)
        run.close()
        self._runs.pop(handle, None)
        handle.state = "finished"
        detail = run.stderr.data.decode("utf-8", errors="replace").strip() or "no message"
        raise ExecutionError(
            f"bubblewrap could not set up the sandbox: {detail}",
            code="sandbox_failed",
            hint=SANDBOX_FAILED_HINT,
        )

    # Finishing ----------------------------------------------------------------------------

    async def _finish_tree(self, handle: ExecutionHandle, run: RunningJob) -> None:
        """After the main process ended: kill what is left of the tree, drain the pipes."""
        if handle.run_as_uid is not None:
            await asyncio.to_thread(kill_uid_processes, handle.run_as_uid)
        await asyncio.gather(
            run.stdout.wait_closed(DRAIN_GRACE_S), run.stderr.wait_closed(DRAIN_GRACE_S)
        )

    def _result(
        self,
        handle: ExecutionHandle,
        run: RunningJob,
        ended: ChildExit,
        outputs: list[CollectedOutput],
    ) -> ExecutionResult:
        usage = usage_from(ended, run.started)
        termination = decode_wait_status(ended.status, sandboxed=self.sandbox)
        last_words = run.stderr.data + run.stderr.tail if run.stderr.truncated else run.stderr.data
        verdict = classify(
            termination,
            handle.request.limits,
            stopped=run.stopped,
            timed_out=run.timed_out,
            cpu_s=usage.cpu_s,
            stderr=last_words,
        )
        bytes_out = metered_bytes_out(run.stdout.total, run.stderr.total, outputs)
        return ExecutionResult(
            status=verdict.status,
            reason=verdict.reason,
            exit_code=termination.exit_code,
            stdout=run.stdout.data,
            stderr=run.stderr.data,
            stdout_truncated=run.stdout.truncated,
            stderr_truncated=run.stderr.truncated,
            outputs=outputs,
            usage=usage.model_copy(update={"bytes_out": bytes_out}),
        )


def _checked_binds(binds: Sequence[ReadOnlyBind]) -> tuple[ReadOnlyBind, ...]:
    for bind in binds:
        try:
            check_read_only_bind(bind)
        except ValueError as exc:
            raise ExecutionError(str(exc), code="invalid_bind") from exc
    return tuple(binds)


def _check_request(request: ExecutionRequest) -> None:
    if not request.command or any("\x00" in part for part in request.command):
        raise ExecutionError("the command is empty or contains NUL bytes", code="invalid_command")
    check_env(request.env)
    check_stdin(request)
    for path in request.outputs:
        checked_relative_path(path, "output")


def _open_stdin(handle: ExecutionHandle) -> int:
    """A read-only descriptor of the job's standard input (``workdir.stdin_path``)."""
    path = stdin_path(handle.work_dir, handle.request.stdin)
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ExecutionError(f"cannot open stdin: {exc}", code="invalid_stdin") from exc


def _job_env(
    handle: ExecutionHandle,
    checkpoint: Path | str | None,
    runtime: PythonRuntime | None = None,
    *,
    sandboxed: bool = True,
) -> dict[str, str]:
    """The runtime's variables (if any), the request's environment, and where the
    checkpoint directory is (if any)."""
    env = runtime_env(runtime, sandboxed=sandboxed) if runtime is not None else {}
    env.update(handle.request.env)
    if checkpoint is not None:
        env[CHECKPOINT_ENV] = str(checkpoint)
    return env


def runtime_env(runtime: PythonRuntime, *, sandboxed: bool) -> dict[str, str]:
    """``PATH`` led by the runtime's interpreter directory, ``PYTHONPATH`` its packages."""
    return {
        "PATH": f"{os.path.dirname(runtime.interpreter)}:{SANDBOX_PATH}",
        "PYTHONPATH": ":".join(runtime.import_paths(sandboxed=sandboxed)),
    }


def _make_work_dir(
    request: ExecutionRequest, work_root: Path, uid: int | None
) -> tuple[Path, Path, Path | None]:
    job_dir, work_dir = create_job_dir(work_root, request.job_id)
    try:
        write_inputs(work_dir, request.inputs, uid)
        checkpoint_dir = prepare_checkpoint_dir(job_dir, request, uid)
    except BaseException:
        remove_tree(job_dir)
        raise
    return job_dir, work_dir, checkpoint_dir
