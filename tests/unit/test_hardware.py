"""Hardware detection reads the real machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import psutil

from computemesh.models.job import Resources
from computemesh.node.capacity import CapacityLedger
from computemesh.node.hardware import detect_gpus, detect_hardware


def test_detects_this_machine(tmp_path: Path) -> None:
    hardware = detect_hardware(tmp_path / "work")
    assert hardware.cpu_count == len(os.sched_getaffinity(0))
    assert hardware.architecture == platform.machine()
    assert hardware.memory_mb == psutil.virtual_memory().total // (1024 * 1024)
    assert hardware.disk_mb > 0
    assert hardware.gpus == detect_gpus()
    assert (tmp_path / "work").is_dir()


def test_capacity_ledger_never_overcommits(tmp_path: Path) -> None:
    ledger = CapacityLedger.for_hardware(detect_hardware(tmp_path), memory_fraction=0.5)
    one_cpu = Resources(cpu=1, memory_mb=64)
    taken = [key for key in map(str, range(64)) if ledger.reserve(key, one_cpu)]
    assert len(taken) == int(ledger.total.cpu)
    assert ledger.free().cpu == 0
    assert not ledger.reserve("extra", one_cpu)
    ledger.release(taken[0])
    assert ledger.reserve("extra", one_cpu)
    assert ledger.running == len(taken)
