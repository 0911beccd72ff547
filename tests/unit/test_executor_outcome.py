"""Reading how a job ended: wait statuses, limits and reasons."""

from __future__ import annotations

import signal

import pytest

from computemesh.executor import SandboxLimits
from computemesh.executor.outcome import (
    Termination,
    Verdict,
    classify,
    decode_wait_status,
    looks_out_of_memory,
    signal_label,
)

LIMITS = SandboxLimits(wall_time_s=2.0, cpu_time_s=1.5, memory_mb=64, max_file_mb=8)


def exited(code: int) -> int:
    return code << 8


def test_decode_plain_exits_and_signals() -> None:
    assert decode_wait_status(exited(0), sandboxed=False) == Termination(0, None)
    assert decode_wait_status(exited(3), sandboxed=True) == Termination(3, None)
    assert decode_wait_status(signal.SIGKILL, sandboxed=False) == Termination(None, 9)


def test_bwrap_reports_signals_as_128_plus_n() -> None:
    assert decode_wait_status(exited(137), sandboxed=True) == Termination(None, 9)
    assert decode_wait_status(exited(152), sandboxed=True) == Termination(None, 24)
    assert decode_wait_status(exited(137), sandboxed=False) == Termination(137, None)
    assert decode_wait_status(exited(128), sandboxed=True) == Termination(128, None)
    assert decode_wait_status(exited(255), sandboxed=True) == Termination(255, None)


def test_signal_label() -> None:
    assert signal_label(9) == "signal 9 (SIGKILL)"
    assert signal_label(63) in ("signal 63 (SIGRTMAX-1)", "signal 63")


@pytest.mark.parametrize(
    ("ended", "kwargs", "expected"),
    [
        (Termination(0, None), {}, Verdict("completed", "exited with code 0")),
        (Termination(2, None), {}, Verdict("failed", "exited with code 2")),
        (Termination(None, 9), {"stopped": True}, Verdict("killed", "stopped before it finished")),
        (
            Termination(None, 9),
            {"timed_out": True},
            Verdict("timeout", "exceeded wall time limit of 2.0 s"),
        ),
        (
            Termination(None, 24),
            {},
            Verdict("killed", "killed by signal 24 (SIGXCPU): exceeded cpu time limit of 1.5 s"),
        ),
        (
            Termination(None, 9),
            {"cpu_s": 1.98},
            Verdict("killed", "killed by signal 9 (SIGKILL): exceeded cpu time limit of 1.5 s"),
        ),
        (
            Termination(None, 9),
            {"cpu_s": 0.1},
            Verdict("killed", "killed by signal 9 (SIGKILL): memory limit 64 MiB"),
        ),
        (
            Termination(None, 25),
            {},
            Verdict("killed", "killed by signal 25 (SIGXFSZ): exceeded file size limit of 8 MiB"),
        ),
        (
            Termination(None, 11),
            {"stderr": b"fatal: Out of memory\n"},
            Verdict("killed", "killed by signal 11 (SIGSEGV): memory limit 64 MiB"),
        ),
        (Termination(None, 11), {}, Verdict("failed", "killed by signal 11 (SIGSEGV)")),
        (Termination(None, 15), {}, Verdict("failed", "killed by signal 15 (SIGTERM)")),
        (
            Termination(1, None),
            {"stderr": b"Traceback...\nMemoryError\n"},
            Verdict("killed", "memory limit 64 MiB exceeded: allocation failed (exit code 1)"),
        ),
    ],
)
def test_classify(ended: Termination, kwargs: dict[str, object], expected: Verdict) -> None:
    assert classify(ended, LIMITS, **kwargs) == expected  # type: ignore[arg-type]


def test_stop_outranks_timeout_and_signals() -> None:
    verdict = classify(Termination(None, 9), LIMITS, stopped=True, timed_out=True, cpu_s=5)
    assert verdict.status == "killed"
    assert classify(Termination(0, None), LIMITS, timed_out=True).status == "timeout"


@pytest.mark.parametrize(
    "text",
    [b"MemoryError", b"mmap: Cannot allocate memory", b"std::bad_alloc", b"runtime: out of memory"],
)
def test_allocation_failures_are_recognised(text: bytes) -> None:
    assert looks_out_of_memory(b"noise\n" + text + b"\n")


def test_ordinary_errors_are_not_memory_errors() -> None:
    assert not looks_out_of_memory(b"Traceback\nValueError: bad input\n")
