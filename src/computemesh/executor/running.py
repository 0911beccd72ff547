"""A launched job as the executor tracks it: process, pipes, exit watch and kill switch."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable

from computemesh.executor.base import ExecutionResult, OutputCallback, OutputStream
from computemesh.executor.streams import CappedReader, ChildExit, ExitWatch
from computemesh.executor.tree_usage import tree_usage
from computemesh.models.market import ResourceUsage

KILL_GRACE_S = 0.5
INFO_CAP = 64 * 1024


class RunningJob:
    """A launched job: its process, pipes and exit watch, and how it was ended."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        fds: dict[str, int],
        cap: int,
        on_output: OutputCallback | None = None,
    ) -> None:
        self.popen = popen
        self.started = time.monotonic()
        self.stdout = CappedReader(fds["stdout"], cap, _stream_callback(on_output, "stdout"))
        self.stderr = CappedReader(fds["stderr"], cap, _stream_callback(on_output, "stderr"))
        self.info = CappedReader(fds["info"], INFO_CAP) if "info" in fds else None
        self.exit = ExitWatch(popen.pid, self.kill_group)
        self.exit.future.add_done_callback(self._record_exit)
        self.init_pidfd: int | None = None
        self.timed_out = False
        self.stopped = False
        self.result: ExecutionResult | None = None

    def _record_exit(self, future: asyncio.Future[ChildExit]) -> None:
        if not future.cancelled():
            self.popen.returncode = os.waitstatus_to_exitcode(future.result().status)

    @property
    def exited(self) -> bool:
        return self.exit.future.done()

    def usage_so_far(self) -> ResourceUsage:
        """Wall time since launch and what the live process tree has used (``/proc``)."""
        tree = tree_usage(self.popen.pid)
        wall = max(0.0, time.monotonic() - self.started)
        return ResourceUsage(wall_s=wall, cpu_s=tree.cpu_s, max_rss_kb=tree.max_rss_kb)

    def kill_tree(self) -> None:
        """SIGKILL the whole tree.

        In a sandbox the job's first process goes first: it is the pid namespace's init,
        so every process of the job dies with it, and bwrap, left running for a moment,
        reaps it and so keeps its CPU and memory usage for ``wait4``. bwrap's process
        group is killed after ``KILL_GRACE_S`` if it has not exited by then.
        """
        if self.init_pidfd is None:
            self.kill_group()
            return
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.init_pidfd, signal.SIGKILL)
        asyncio.get_running_loop().call_later(KILL_GRACE_S, self.kill_group)

    def kill_group(self) -> None:
        """SIGKILL the launched process's group, unless the process was reaped already."""
        if not self.exited:
            with contextlib.suppress(OSError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def close(self) -> None:
        """Release the pipes and descriptors (the process itself is left alone)."""
        for reader in (self.stdout, self.stderr, self.info):
            if reader is not None:
                reader.close()
        self.exit.close()
        if self.init_pidfd is not None:
            os.close(self.init_pidfd)
            self.init_pidfd = None


def _stream_callback(
    on_output: OutputCallback | None, stream: OutputStream
) -> Callable[[bytes], None] | None:
    if on_output is None:
        return None
    return functools.partial(on_output, stream)


def child_pid_from_info(info: bytes) -> int | None:
    """The host pid of the sandbox's first process, from bwrap's ``--info-fd`` JSON."""
    try:
        pid = json.loads(info)["child-pid"]
    except (ValueError, KeyError, TypeError):
        return None
    return pid if isinstance(pid, int) and pid > 0 else None


def usage_from(ended: ChildExit, started: float) -> ResourceUsage:
    """Wall time since ``started``, and CPU time and peak RSS from ``wait4``.

    CPU time covers the launched process and every descendant that was waited for (in
    a sandbox: the whole job, which bwrap reaps). The peak RSS is the largest of those
    processes, but never below what the launched process had resident when it was
    forked from the node, since Linux carries that over ``exec``: small jobs read as
    the node's own resident size.
    """
    wall = max(0.0, ended.monotonic - started)
    if ended.rusage is None:
        return ResourceUsage(wall_s=wall, cpu_s=0.0, max_rss_kb=0)
    cpu = ended.rusage.ru_utime + ended.rusage.ru_stime
    return ResourceUsage(
        wall_s=wall, cpu_s=max(0.0, cpu), max_rss_kb=max(0, ended.rusage.ru_maxrss)
    )
