"""How a job's first process is set up between ``fork`` and ``exec``.

In the forked child, before bwrap (or the job itself, without a sandbox) executes:

0. cgroup (where the node has them, see ``cgroups``): the child joins its job's group
   while still privileged (and before staging covers ``/sys``), so every process of the
   job is counted there.
1. Staging (root nodes, sandboxed, work dir not reachable by other users): the child
   enters a private mount namespace and bind-mounts the job dir (holding ``work/`` and,
   for a job that checkpoints, ``checkpoint/``) over ``STAGING_MOUNTPOINT``. bwrap
   resolves bind sources as the unprivileged job uid, which cannot traverse a node home
   kept at mode 0700; the staged copy is reachable.
   The mount is private: the host never sees it and it vanishes with the sandbox.
2. Privilege drop (root nodes): supplementary groups cleared, then gid and uid set to a
   uid of the job's own from ``JobUidPool``. This matters for the process limit:
   Linux never enforces RLIMIT_NPROC for uid 0 (and, inside a user namespace, the job's
   processes would still be uid 0 on the host). Under a uid of its own every process
   of the job counts, and only the job's: a fork bomb stops at ``max_processes``.
   Nodes that do not run as root cannot switch uid; their job shares the node user's
   count, so its NPROC limit is raised by the tasks that user already has (best effort).
3. ``no_new_privs``: no set-uid program can give the job more privileges.
4. The rlimits of ``limits.rlimits_for``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from computemesh.executor.cgroups import join_cgroup
from computemesh.executor.limits import Rlimit, apply_rlimits
from computemesh.models.errors import ExecutionError

JOB_UID_BASE = 1_900_000_000
"""First host uid (and gid) handed to jobs on root nodes; in a range Linux distributions
leave unused (between container ranges and 2^31)."""

JOB_UID_COUNT = 1 << 16

STAGING_MOUNTPOINT = "/sys"
"""A directory every Linux host has and bwrap itself does not need; only ever covered
inside the private mount namespace of one sandbox launch."""

_CLONE_NEWNS = 0x00020000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_PR_SET_NO_NEW_PRIVS = 38


class JobUidPool:
    """Hands out host uids for jobs, each unique among this process's running jobs.

    Uids are drawn at random from ``[base, base + count)`` so that two node processes
    on one host are unlikely to pick the same one.
    """

    def __init__(self, base: int = JOB_UID_BASE, count: int = JOB_UID_COUNT) -> None:
        self.base = base
        self.count = count
        self._in_use: set[int] = set()

    def acquire(self) -> int:
        """A uid no running job of this process has; raises ExecutionError when none is left."""
        for _ in range(64):
            uid = self.base + secrets.randbelow(self.count)
            if uid not in self._in_use:
                self._in_use.add(uid)
                return uid
        raise ExecutionError("no free job uid", code="no_job_uid", retryable=True)

    def release(self, uid: int) -> None:
        self._in_use.discard(uid)


@dataclass(frozen=True)
class LaunchPlan:
    """What the child does before exec (see the module docstring).

    ``uid``: switch to this uid and gid (root only). ``staged_job_dir``: host path to
    bind-mount over ``STAGING_MOUNTPOINT`` in a private mount namespace (root only).
    """

    rlimits: tuple[Rlimit, ...]
    uid: int | None = None
    staged_job_dir: str | None = None
    cgroup_procs: tuple[str, ...] = ()


def can_switch_uid() -> bool:
    """True when this process may run jobs under uids of their own (it is root)."""
    return os.geteuid() == 0


def reachable_by_others(path: Path) -> bool:
    """True when every parent directory of ``path`` lets other users traverse it."""
    for parent in path.absolute().parents:
        try:
            mode = os.stat(parent).st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def user_task_count(uid: int) -> int:
    """Tasks (threads) that processes of ``uid`` have now, as RLIMIT_NPROC counts them."""
    total = 0
    for process in psutil.process_iter(["uids", "num_threads"]):
        uids = process.info.get("uids")
        if uids is not None and uids.real == uid:
            total += process.info.get("num_threads") or 1
    return total


def kill_uid_processes(uid: int, rounds: int = 5) -> int:
    """SIGKILL every process whose real uid is ``uid``; returns how many were found.

    Only meant for uids handed out by ``JobUidPool``. Repeats a few times, since a
    process may fork while the first pass runs.
    """
    found = 0
    for _ in range(rounds):
        victims = [
            p
            for p in psutil.process_iter(["uids"])
            if p.info.get("uids") is not None and p.info["uids"].real == uid
        ]
        if not victims:
            break
        found += len(victims)
        for process in victims:
            with contextlib.suppress(psutil.Error):
                process.kill()
        time.sleep(0.01)
    return found


def make_preexec(plan: LaunchPlan) -> Callable[[], None]:
    """The function ``subprocess.Popen`` runs in the child before exec."""
    libc = _libc()

    def preexec() -> None:
        join_cgroup(plan.cgroup_procs)  # before staging covers /sys, where cgroups live
        if plan.staged_job_dir is not None:
            _stage_job_dir(libc, plan.staged_job_dir)
        if plan.uid is not None:
            os.setgroups([])
            os.setresgid(plan.uid, plan.uid, plan.uid)
            os.setresuid(plan.uid, plan.uid, plan.uid)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        apply_rlimits(plan.rlimits)

    return preexec


def memory_files(files: dict[str, bytes], opened: list[int]) -> dict[str, int]:
    """One memory file per entry, rewound, for bwrap to copy; records each in ``opened``."""
    fds: dict[str, int] = {}
    for path, content in files.items():
        fd = os.memfd_create(os.path.basename(path))
        opened.append(fd)
        os.write(fd, content)
        os.lseek(fd, 0, os.SEEK_SET)
        fds[path] = fd
    return fds


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
    ]
    libc.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    return libc


def _stage_job_dir(libc: ctypes.CDLL, job_dir: str) -> None:
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    target = STAGING_MOUNTPOINT.encode()
    _check(libc.mount(os.fsencode(job_dir), target, None, _MS_BIND, None), "bind job dir")


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
