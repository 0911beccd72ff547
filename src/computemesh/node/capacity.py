"""Capacity accounting: what is promised to allocations is not offered again."""

from __future__ import annotations

from computemesh.models.job import Resources
from computemesh.models.market import Capacity, Hardware


class CapacityLedger:
    """Reservations against a fixed total. Not thread-safe; use from one event loop."""

    def __init__(self, total: Capacity) -> None:
        self.total = total
        self._reserved: dict[str, Resources] = {}

    @classmethod
    def for_hardware(cls, hardware: Hardware, *, memory_fraction: float = 0.8) -> CapacityLedger:
        return cls(
            Capacity(
                cpu=float(hardware.cpu_count),
                memory_mb=int(hardware.memory_mb * memory_fraction),
                disk_mb=hardware.disk_mb,
                gpu_count=len(hardware.gpus),
            )
        )

    def free(self) -> Capacity:
        used = list(self._reserved.values())
        return Capacity(
            cpu=max(0.0, self.total.cpu - sum(r.cpu for r in used)),
            memory_mb=max(0, self.total.memory_mb - sum(r.memory_mb for r in used)),
            disk_mb=max(0, self.total.disk_mb - sum(r.disk_mb for r in used)),
            gpu_count=max(0, self.total.gpu_count - sum(r.gpu_count for r in used)),
        )

    def fits(self, need: Resources) -> bool:
        free = self.free()
        return (
            need.cpu <= free.cpu
            and need.memory_mb <= free.memory_mb
            and need.disk_mb <= free.disk_mb
            and need.gpu_count <= free.gpu_count
        )

    def reserve(self, key: str, need: Resources) -> bool:
        """Reserve ``need`` under ``key``; False (and nothing reserved) if it does not fit."""
        if key in self._reserved:
            return True
        if not self.fits(need):
            return False
        self._reserved[key] = need
        return True

    def release(self, key: str) -> None:
        self._reserved.pop(key, None)

    @property
    def running(self) -> int:
        return len(self._reserved)
