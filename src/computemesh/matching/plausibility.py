"""Advertisements that cannot be true: refused before any matcher trusts their numbers.

A validated ``Advertisement`` can still claim what no machine has: more free capacity than
it has in total, infinite latencies, petabytes of RAM. Such an offer is refused whole (the
index drops it, the per-offer check turns it into one reason per problem). Rates are bounded
by the model itself (``models.market.Rates``): an advertisement with a bad rate never parses.
"""

from __future__ import annotations

import math

from computemesh.models.market import Advertisement

MAX_MEMORY_MB = 64 * 1024 * 1024
"""64 TiB: above any single machine sold today."""
MAX_DISK_MB = 1024 * 1024 * 1024
"""1 PiB of local disk."""
MAX_VRAM_MB = 1024 * 1024
"""1 TiB per GPU."""
MAX_LATENCY_MS = 60_000.0
CPU_TOLERANCE = 1e-9


def implausible_values(offer: Advertisement) -> list[str]:
    """Every impossible value in ``offer``, one sentence each; empty when it is plausible."""
    return [*_hardware_problems(offer), *_free_problems(offer), *_market_problems(offer)]


def _hardware_problems(offer: Advertisement) -> list[str]:
    hardware = offer.hardware
    problems = []
    if hardware.cpu_count < 1:
        problems.append(f"cpu_count {hardware.cpu_count} is below 1")
    if not 1 <= hardware.memory_mb <= MAX_MEMORY_MB:
        problems.append(f"memory_mb {hardware.memory_mb} is outside 1..{MAX_MEMORY_MB}")
    if not 0 <= hardware.disk_mb <= MAX_DISK_MB:
        problems.append(f"disk_mb {hardware.disk_mb} is outside 0..{MAX_DISK_MB}")
    for position, gpu in enumerate(hardware.gpus):
        if not 0 <= gpu.vram_mb <= MAX_VRAM_MB:
            problems.append(f"gpu {position} vram_mb {gpu.vram_mb} is outside 0..{MAX_VRAM_MB}")
    return problems


def _free_problems(offer: Advertisement) -> list[str]:
    free, hardware = offer.free, offer.hardware
    pairs = (
        ("cpu", free.cpu, hardware.cpu_count + CPU_TOLERANCE),
        ("memory_mb", free.memory_mb, hardware.memory_mb),
        ("disk_mb", free.disk_mb, hardware.disk_mb),
        ("gpu_count", free.gpu_count, len(hardware.gpus)),
    )
    problems = []
    for name, available, total in pairs:
        if not math.isfinite(available) or available < 0:
            problems.append(f"free {name} {available} is not a finite amount")
        elif available > total:
            problems.append(f"free {name} {available:g} exceeds the total {total:g}")
    return problems


def _market_problems(offer: Advertisement) -> list[str]:
    problems = []
    reputation = offer.reputation
    if reputation is not None and not (math.isfinite(reputation) and 0 <= reputation <= 1):
        problems.append(f"reputation {reputation} is outside 0..1")
    bad = sorted(
        region
        for region, rtt in offer.latency_ms.items()
        if not (math.isfinite(rtt) and 0 <= rtt <= MAX_LATENCY_MS)
    )
    if bad:
        problems.append(f"latency_ms to {', '.join(bad)} is outside 0..{MAX_LATENCY_MS:g}")
    return problems
