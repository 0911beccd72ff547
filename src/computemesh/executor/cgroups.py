"""Per-job cgroups, where the machine lets the node create them.

``detect_cgroups`` looks for a hierarchy the node can write to: cgroup v2 (one unified tree
whose ``cgroup.controllers`` offers memory, pids and cpu) or, failing that, v1 (separate
``memory``, ``pids`` and ``cpu`` hierarchies). It creates a ``computemesh`` group under
each and returns None, saying so once in the log, when it cannot: then jobs have their
rlimits only.

``JobCgroup`` is one job's group with its limits written before the job starts:

    v2: memory.max, memory.swap.max = 0, pids.max, cpu.max ("quota period")
    v1: memory.limit_in_bytes, pids.max, cpu.cfs_quota_us / cpu.cfs_period_us

The job's first process joins it between fork and exec (``procs_files``: it writes "0",
meaning itself, to each ``cgroup.procs``), so everything it starts is counted: memory
across all its processes (not per process, as RLIMIT_AS), processes, CPU bandwidth.
``remove`` kills whatever is left in the group and deletes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP_NAME = "computemesh"
CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "pids", "cpu")
CgroupVersion = Literal["v1", "v2"]


@dataclass(frozen=True)
class CgroupSupport:
    """Where job groups go: one parent per hierarchy (one for v2, one per controller for v1)."""

    version: CgroupVersion
    parents: dict[str, Path]


@dataclass(frozen=True)
class JobCgroup:
    """One job's group: a directory per hierarchy, limits already written."""

    version: CgroupVersion
    paths: tuple[Path, ...]

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(str(path / "cgroup.procs") for path in self.paths)

    def remove(self) -> None:
        """Kill the processes still in the group and delete it; never raises."""
        for path in self.paths:
            for _ in range(20):
                pids = _read_pids(path / "cgroup.procs")
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                path.rmdir()


def detect_cgroups(root: Path = CGROUP_ROOT) -> CgroupSupport | None:
    """The cgroup hierarchy this process can create job groups in, or None."""
    for candidate in (root, root / "unified"):
        support = _v2_support(candidate)
        if support is not None:
            return support
    support = _v1_support(root)
    if support is None:
        log.warning("no writable cgroup hierarchy here: jobs are limited by rlimits only")
    return support


def cgroup_version(support: CgroupSupport | None) -> Literal["v1", "v2", "none"]:
    return "none" if support is None else support.version


def create_job_cgroup(
    support: CgroupSupport, job_id: str, *, memory_mb: int, processes: int, cpu_cores: float
) -> JobCgroup:
    """Make a group for one job with its limits; raises OSError when the kernel refuses."""
    name = f"job-{secrets.token_hex(8)}"
    paths: list[Path] = []
    try:
        for controller, parent in support.parents.items():
            path = parent / name
            path.mkdir()
            paths.append(path)
            _write_limits(support.version, controller, path, memory_mb, processes, cpu_cores)
    except OSError:
        JobCgroup(support.version, tuple(paths)).remove()
        raise
    log.debug("job %s in cgroup %s (%s)", job_id, name, support.version)
    return JobCgroup(support.version, tuple(paths))


def _write_limits(
    version: CgroupVersion,
    controller: str,
    path: Path,
    memory_mb: int,
    processes: int,
    cpu_cores: float,
) -> None:
    memory = str(memory_mb * 1024 * 1024)
    quota = str(max(1000, int(cpu_cores * CPU_PERIOD_US)))
    if version == "v2":
        _write(path / "memory.max", memory)
        with contextlib.suppress(OSError):
            _write(path / "memory.swap.max", "0")
        _write(path / "pids.max", str(processes))
        _write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")
    elif controller == "memory":
        _write(path / "memory.limit_in_bytes", memory)
    elif controller == "pids":
        _write(path / "pids.max", str(processes))
    elif controller == "cpu":
        _write(path / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(path / "cpu.cfs_quota_us", quota)


def _v2_support(root: Path) -> CgroupSupport | None:
    try:
        controllers = set((root / "cgroup.controllers").read_text().split())
    except OSError:
        return None
    if not {"memory", "pids", "cpu"} <= controllers:
        return None
    parent = _make_parent(root)
    if parent is None:
        return None
    try:
        _write(parent / "cgroup.subtree_control", "+memory +pids +cpu")
    except OSError:
        return None
    return CgroupSupport("v2", {"unified": parent})


def _v1_support(root: Path) -> CgroupSupport | None:
    parents: dict[str, Path] = {}
    for controller in V1_CONTROLLERS:
        parent = _make_parent(root / controller)
        if parent is None:
            return None
        parents[controller] = parent
    if not (parents["pids"] / "pids.max").exists():
        return None
    return CgroupSupport("v1", parents)


def _make_parent(hierarchy: Path) -> Path | None:
    if not (hierarchy / "cgroup.procs").exists() or not os.access(hierarchy, os.W_OK):
        return None
    parent = hierarchy / GROUP_NAME
    try:
        parent.mkdir(exist_ok=True)
    except OSError:
        return None
    return parent


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except (OSError, ValueError):
        return []


def join_cgroup(procs_files: tuple[str, ...]) -> None:
    """Move the calling process into the groups (run between fork and exec)."""
    for procs in procs_files:
        _write(Path(procs), "0")
