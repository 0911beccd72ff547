"""Resource limits (rlimits) a job runs under, and how each maps to a ``SandboxLimits`` field.

    RLIMIT_AS      memory_mb          address space of each process; an allocation past
                                      it fails (MemoryError, ENOMEM, SIGSEGV)
    RLIMIT_CPU     cpu_time_s         CPU seconds of each process, rounded up: SIGKILL
                                      when reached
    RLIMIT_NPROC   max_processes      processes (threads) the job's uid may have; this is
                                      what contains a fork bomb (see ``launch``)
    RLIMIT_NOFILE  max_open_files     open descriptors per process
    RLIMIT_FSIZE   max_file_mb        size of any file written: SIGXFSZ past it
    RLIMIT_CORE    0                  no core dumps

Limits are set in the launched child before it executes anything, and are inherited
by bubblewrap and everything the job starts; a job can lower them but never raise them.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass

from computemesh.executor.base import SandboxLimits

MIB = 1024 * 1024

SANDBOX_OVERHEAD_PROCESSES = 1
"""Processes of the job's uid that are not the job's own: bwrap, which waits outside."""


@dataclass(frozen=True)
class Rlimit:
    """One ``setrlimit`` call: ``resource`` is a ``resource.RLIMIT_*`` constant."""

    name: str
    resource: int
    soft: int
    hard: int


def enforced_cpu_seconds(limits: SandboxLimits) -> int:
    """RLIMIT_CPU counts whole seconds: the CPU time limit rounded up (at least 1)."""
    return max(1, math.ceil(limits.cpu_time_s))


def rlimits_for(limits: SandboxLimits, *, extra_processes: int = 0) -> tuple[Rlimit, ...]:
    """The rlimits for ``limits``.

    ``extra_processes`` is added to ``max_processes`` for processes that share the
    job's uid without being the job's (the sandbox's own, or the node user's when the
    job cannot run under a uid of its own).
    """
    cpu = enforced_cpu_seconds(limits)
    memory = limits.memory_mb * MIB
    file_size = limits.max_file_mb * MIB
    processes = limits.max_processes + max(0, extra_processes)
    return (
        Rlimit("AS", resource.RLIMIT_AS, memory, memory),
        Rlimit("CPU", resource.RLIMIT_CPU, cpu, cpu),
        Rlimit("NPROC", resource.RLIMIT_NPROC, processes, processes),
        Rlimit("NOFILE", resource.RLIMIT_NOFILE, limits.max_open_files, limits.max_open_files),
        Rlimit("FSIZE", resource.RLIMIT_FSIZE, file_size, file_size),
        Rlimit("CORE", resource.RLIMIT_CORE, 0, 0),
    )


def apply_rlimits(rlimits: tuple[Rlimit, ...]) -> None:
    """Set each limit on the calling process, never above its current hard limit."""
    for item in rlimits:
        _, current_hard = resource.getrlimit(item.resource)
        hard = item.hard if current_hard == resource.RLIM_INFINITY else min(item.hard, current_hard)
        resource.setrlimit(item.resource, (min(item.soft, hard), hard))
