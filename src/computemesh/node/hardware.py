"""What this machine has: CPU, architecture, memory, disk, (through NVML) GPUs, and
whether jobs can have cgroups of their own ("v1", "v2" or "none")."""

from __future__ import annotations

import logging
import os
import platform
import shutil
from pathlib import Path

import psutil

from computemesh.executor.cgroups import cgroup_version, detect_cgroups
from computemesh.models.market import GpuInfo, Hardware

log = logging.getLogger(__name__)

MIB = 1024 * 1024


def detect_cpu_count() -> int:
    """CPUs this process may run on (affinity-aware where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def detect_gpus() -> list[GpuInfo]:
    """NVIDIA GPUs through NVML; an empty list where no driver or library is present."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("no NVML here: %s", exc)
        return []
    try:
        return [_gpu_info(pynvml, index) for index in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def _gpu_info(pynvml: object, index: int) -> GpuInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)  # type: ignore[attr-defined]
    name = pynvml.nvmlDeviceGetName(handle)  # type: ignore[attr-defined]
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)  # type: ignore[attr-defined]
    model = name.decode() if isinstance(name, bytes) else str(name)
    return GpuInfo(model=model, vram_mb=int(memory.total) // MIB, vendor="nvidia")


def detect_hardware(disk_path: Path) -> Hardware:
    """Hardware as seen now; ``disk_path`` is where work directories live."""
    disk_path.mkdir(parents=True, exist_ok=True)
    return Hardware(
        cpu_count=detect_cpu_count(),
        architecture=platform.machine() or "unknown",
        memory_mb=psutil.virtual_memory().total // MIB,
        disk_mb=shutil.disk_usage(disk_path).free // MIB,
        gpus=detect_gpus(),
        cgroups=cgroup_version(detect_cgroups()),
    )
