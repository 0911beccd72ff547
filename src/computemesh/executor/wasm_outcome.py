"""Turning how a wasm guest ended into a status and a reason a person can read.

Precedence: stopped by the node > wall-time limit > file size limit > out of fuel > the
guest's own end (exit code 0, the memory limit, a failure to start, a trap, an exit code).

The memory limit is never seen directly: past it ``memory.grow`` returns -1 to the guest,
which then usually traps or exits non-zero. A guest that fails that way is reported as
stopped by the memory limit when its linear memory ended within ``MEMORY_HEADROOM_BYTES``
of the limit (it grew as far as it could), or when its last words on stderr say that an
allocation failed; a module whose initial memory is over the limit does not start.
"""

from __future__ import annotations

from computemesh.executor.base import SandboxLimits
from computemesh.executor.outcome import Verdict, looks_out_of_memory
from computemesh.executor.wasm_run import MIB, GuestExit

MEMORY_HEADROOM_BYTES = 1 * MIB
INSTANTIATION_OVER_LIMIT = "exceeds memory limits"


def classify_guest(
    ended: GuestExit,
    limits: SandboxLimits,
    *,
    fuel: int,
    stopped: bool = False,
    timed_out: bool = False,
    disk_exceeded: bool = False,
    stderr: bytes = b"",
) -> Verdict:
    """The status and reason for a guest that ended as ``ended`` with a budget of ``fuel``.

    ``stderr`` is what the guest wrote last (used to recognise allocation failures).
    """
    if stopped:
        return Verdict("killed", "stopped before it finished")
    if timed_out:
        return Verdict("timeout", f"exceeded wall time limit of {float(limits.wall_time_s)} s")
    if disk_exceeded:
        return Verdict(
            "killed", f"exceeded file size limit of {limits.max_file_mb} MiB (all its files)"
        )
    if ended.end == "out_of_fuel":
        return Verdict("killed", f"out of fuel: used its whole budget of {fuel} fuel")
    if ended.end == "interrupted":
        return Verdict("killed", "interrupted before it finished")
    if ended.exit_code == 0:
        return Verdict("completed", "exited with code 0")
    memory = _memory_verdict(ended, limits, stderr)
    if memory is not None:
        return memory
    if ended.end == "not_started":
        return Verdict("failed", f"could not start: {ended.message}")
    if ended.end == "trapped":
        return Verdict("failed", ended.message)
    return Verdict("failed", f"exited with code {ended.exit_code}")


def _memory_verdict(ended: GuestExit, limits: SandboxLimits, stderr: bytes) -> Verdict | None:
    limit = f"memory limit {limits.memory_mb} MiB exceeded"
    if ended.end == "not_started":
        if INSTANTIATION_OVER_LIMIT in ended.message:
            return Verdict("killed", f"{limit}: its initial memory is larger")
        return None
    headroom = limits.memory_mb * MIB - ended.memory_bytes
    if headroom >= MEMORY_HEADROOM_BYTES and not looks_out_of_memory(stderr):
        return None
    how = ended.message or f"exited with code {ended.exit_code}"
    used = ended.memory_bytes / MIB
    return Verdict("killed", f"{limit}: memory.grow refused at {used:.1f} MiB ({how})")
