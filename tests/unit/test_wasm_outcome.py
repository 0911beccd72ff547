"""How a wasm guest's end becomes a status and reason; the default fuel budget."""

from __future__ import annotations

import pytest

from computemesh.executor import SandboxLimits
from computemesh.executor.wasm_outcome import classify_guest
from computemesh.executor.wasm_run import FUEL_PER_CPU_SECOND, MIB, GuestEnd, GuestExit, fuel_budget

LIMITS = SandboxLimits(wall_time_s=5, cpu_time_s=2, memory_mb=16, max_file_mb=8)


def ended(
    end: GuestEnd,
    *,
    exit_code: int | None = None,
    message: str = "",
    memory_bytes: int = 64 * 1024,
) -> GuestExit:
    return GuestExit(
        end=end,
        exit_code=exit_code,
        message=message,
        fuel_used=None,
        memory_bytes=memory_bytes,
        cpu_s=0.0,
        wall_s=0.0,
    )


def test_returned_or_exit_zero_is_completed() -> None:
    for guest in (ended("returned", exit_code=0), ended("exited", exit_code=0)):
        verdict = classify_guest(guest, LIMITS, fuel=100)
        assert (verdict.status, verdict.reason) == ("completed", "exited with code 0")


def test_node_decisions_take_precedence_over_the_guest() -> None:
    guest = ended("interrupted")
    assert classify_guest(guest, LIMITS, fuel=1, stopped=True, timed_out=True).status == "killed"
    timeout = classify_guest(guest, LIMITS, fuel=1, timed_out=True, disk_exceeded=True)
    assert (timeout.status, timeout.reason) == ("timeout", "exceeded wall time limit of 5.0 s")
    disk = classify_guest(guest, LIMITS, fuel=1, disk_exceeded=True)
    assert disk.status == "killed" and "file size limit of 8 MiB" in disk.reason


def test_out_of_fuel_is_killed_and_says_so() -> None:
    verdict = classify_guest(ended("out_of_fuel"), LIMITS, fuel=1234)
    assert verdict.status == "killed"
    assert verdict.reason.startswith("out of fuel")
    assert "1234" in verdict.reason


def test_guest_at_the_memory_limit_that_traps_is_killed_by_memory() -> None:
    full = ended("trapped", message="trap: unreachable", memory_bytes=16 * MIB - 64 * 1024)
    verdict = classify_guest(full, LIMITS, fuel=1)
    assert verdict.status == "killed"
    assert "memory limit 16 MiB exceeded" in verdict.reason
    assert "trap: unreachable" in verdict.reason


def test_guest_saying_out_of_memory_is_killed_by_memory() -> None:
    small = ended("exited", exit_code=1)
    verdict = classify_guest(small, LIMITS, fuel=1, stderr=b"app: out of memory\n")
    assert verdict.status == "killed" and "memory limit" in verdict.reason


def test_initial_memory_over_the_limit() -> None:
    guest = ended("not_started", message="memory minimum size of 100 pages exceeds memory limits")
    verdict = classify_guest(guest, LIMITS, fuel=1)
    assert verdict.status == "killed"
    assert "initial memory" in verdict.reason


def test_other_failures_keep_their_own_reason() -> None:
    trap = classify_guest(
        ended("trapped", message="trap: integer division by zero"), LIMITS, fuel=1
    )
    assert (trap.status, trap.reason) == ("failed", "trap: integer division by zero")
    code = classify_guest(ended("exited", exit_code=3), LIMITS, fuel=1)
    assert (code.status, code.reason) == ("failed", "exited with code 3")
    link = classify_guest(ended("not_started", message="unknown import"), LIMITS, fuel=1)
    assert (link.status, link.reason) == ("failed", "could not start: unknown import")


def test_fuel_budget_defaults_to_cpu_time() -> None:
    assert fuel_budget(LIMITS) == 2 * FUEL_PER_CPU_SECOND
    assert fuel_budget(LIMITS, 99) == 99
    with pytest.raises(ValueError):
        fuel_budget(LIMITS, 0)
