"""Turning how a job's process ended into a status and a reason a person can read.

Precedence: stopped by the node > wall-time limit > a signal > the exit code.

Under bubblewrap the node sees bwrap's exit, which reports a job killed by signal N as
exit code 128 + N (as shells do); such codes are read as that signal. A job that exits
with such a code on purpose is therefore reported as killed by the signal.

Limits are recognised from the signal (SIGXCPU, or SIGKILL once the CPU time used has
reached the limit: CPU time; SIGXFSZ: file size) and, for memory, from the job's own
last words: a process that hits RLIMIT_AS sees allocations
fail, and then usually says so (MemoryError, ENOMEM, bad_alloc) before exiting non-zero
or dies of SIGSEGV or SIGABRT. Those cases are reported as "killed" by the memory limit.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from computemesh.executor.base import SandboxLimits
from computemesh.executor.limits import enforced_cpu_seconds
from computemesh.models.market import ResultStatus

MEMORY_MARKERS = (
    b"memoryerror",
    b"cannot allocate memory",
    b"std::bad_alloc",
    b"out of memory",
    b"memory exhausted",
    b"failed to allocate",
)
LIMIT_SIGNALS_MEMORY = frozenset({signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT})


@dataclass(frozen=True)
class Termination:
    """How the process ended: exactly one of ``exit_code`` and ``signal`` is set."""

    exit_code: int | None
    signal: int | None


@dataclass(frozen=True)
class Verdict:
    status: ResultStatus
    reason: str


def decode_wait_status(status: int, *, sandboxed: bool) -> Termination:
    """Read a raw wait status (as ``wait4`` returns it) into a ``Termination``."""
    if os.WIFSIGNALED(status):
        return Termination(exit_code=None, signal=os.WTERMSIG(status))
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 255
    if sandboxed and 128 < code <= 128 + 64:
        return Termination(exit_code=None, signal=code - 128)
    return Termination(exit_code=code, signal=None)


def signal_label(number: int) -> str:
    """E.g. "signal 9 (SIGKILL)"."""
    try:
        return f"signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"signal {number}"


def looks_out_of_memory(stderr: bytes) -> bool:
    """True when the job's error output says an allocation failed."""
    lowered = stderr.lower()
    return any(marker in lowered for marker in MEMORY_MARKERS)


def classify(
    ended: Termination,
    limits: SandboxLimits,
    *,
    stopped: bool = False,
    timed_out: bool = False,
    cpu_s: float = 0.0,
    stderr: bytes = b"",
) -> Verdict:
    """The status and reason for a job that ended as ``ended``.

    ``stderr`` is what the job wrote last (used to recognise allocation failures);
    ``cpu_s`` its CPU time (used to recognise the CPU limit behind a SIGKILL).
    """
    if stopped:
        return Verdict("killed", "stopped before it finished")
    if timed_out:
        return Verdict("timeout", f"exceeded wall time limit of {float(limits.wall_time_s)} s")
    if ended.signal is not None:
        return _signal_verdict(ended.signal, limits, cpu_s=cpu_s, stderr=stderr)
    code = ended.exit_code if ended.exit_code is not None else 255
    if code == 0:
        return Verdict("completed", "exited with code 0")
    if looks_out_of_memory(stderr):
        return Verdict(
            "killed",
            f"memory limit {limits.memory_mb} MiB exceeded: allocation failed (exit code {code})",
        )
    return Verdict("failed", f"exited with code {code}")


def _signal_verdict(number: int, limits: SandboxLimits, *, cpu_s: float, stderr: bytes) -> Verdict:
    label = f"killed by {signal_label(number)}"
    cpu_limit = float(limits.cpu_time_s)
    cpu_enforced = enforced_cpu_seconds(limits)
    if number == signal.SIGXCPU or (number == signal.SIGKILL and cpu_s >= 0.75 * cpu_enforced):
        return Verdict("killed", f"{label}: exceeded cpu time limit of {cpu_limit} s")
    if number == signal.SIGXFSZ:
        return Verdict("killed", f"{label}: exceeded file size limit of {limits.max_file_mb} MiB")
    if number in LIMIT_SIGNALS_MEMORY and (number == signal.SIGKILL or looks_out_of_memory(stderr)):
        return Verdict("killed", f"{label}: memory limit {limits.memory_mb} MiB")
    return Verdict("failed", label)
