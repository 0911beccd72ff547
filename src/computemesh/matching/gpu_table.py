"""The GPUs of every indexed node, kept as ``(node row, GPU type, count)`` entries.

Nodes usually hold a few identical GPUs, so a node is one or two entries; a job's GPU
requirement is evaluated once per distinct type, then counted per node with one
``bincount`` over the entries.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from numpy.typing import NDArray

from computemesh.matching.requirement import GpuNeed
from computemesh.matching.vocabulary import MISSING, Vocabulary
from computemesh.models.job import compute_capability_value
from computemesh.models.market import GpuInfo

GpuType = tuple[str, str, int, int]
"""model as written, vendor folded, VRAM MB, compute capability value (MISSING if unknown)."""


class GpuTable:
    """GPU entries by node row; entries of replaced or removed nodes are compacted lazily."""

    def __init__(self) -> None:
        self.models = Vocabulary()
        self._types: dict[GpuType, int] = {}
        self._type_columns: tuple[NDArray[np.int64], ...] | None = None
        self._type_vendors: list[str] = []
        self.rows = np.zeros(0, dtype=np.int64)
        self.types = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.float64)
        self.live = np.zeros(0, dtype=bool)
        self.size = 0
        self._entries: dict[int, list[int]] = {}
        self._dead = 0

    def set_node(self, row: int, gpus: list[GpuInfo]) -> None:
        """Replace the GPUs recorded for ``row``."""
        self.clear_node(row)
        kinds = Counter(self._type_of(gpu) for gpu in gpus)
        if kinds:
            self._entries[row] = [self._append(row, kind, count) for kind, count in kinds.items()]

    def clear_node(self, row: int) -> None:
        for entry in self._entries.pop(row, []):
            self.live[entry] = False
            self._dead += 1
        if self._dead > 1024 and self._dead > self.size // 2:
            self._compact()

    def matching_counts(self, need: GpuNeed, rows: int) -> NDArray[np.float64]:
        """For each of the first ``rows`` node rows, how many of its GPUs match ``need``."""
        if self.size == 0 or not self._types:
            return np.zeros(rows)
        ok = self._type_matches(need)
        n = self.size
        weights = np.where(ok[self.types[:n]] & self.live[:n], self.counts[:n], 0.0)
        counts = np.bincount(self.rows[:n], weights=weights, minlength=rows)[:rows]
        return counts.astype(np.float64, copy=False)

    def _type_matches(self, need: GpuNeed) -> NDArray[np.bool_]:
        model_code, vram, capability = self._columns()
        ok = vram >= need.min_vram_mb
        if need.model is not None:
            wanted = need.model.casefold()
            model_ok = np.array([wanted in m.casefold() for m in self.models.values], dtype=bool)
            ok &= model_ok[model_code]
        if need.vendor is not None:
            vendor = need.vendor.casefold()
            ok &= np.array([v == vendor for v in self._type_vendors], dtype=bool)
        if need.min_capability is not None or need.max_capability is not None:
            ok &= capability != MISSING
        if need.min_capability is not None:
            ok &= capability >= need.min_capability
        if need.max_capability is not None:
            ok &= capability <= need.max_capability
        return ok

    def _columns(self) -> tuple[NDArray[np.int64], ...]:
        if self._type_columns is None:
            kinds = sorted(self._types, key=self._types.__getitem__)
            self._type_columns = (
                np.array([self.models.find(kind[0]) for kind in kinds], dtype=np.int64),
                np.array([kind[2] for kind in kinds], dtype=np.int64),
                np.array([kind[3] for kind in kinds], dtype=np.int64),
            )
        return self._type_columns

    def _type_of(self, gpu: GpuInfo) -> int:
        capability = gpu.compute_capability
        kind = (
            gpu.model,
            gpu.vendor.casefold(),
            gpu.vram_mb,
            MISSING if capability is None else compute_capability_value(capability),
        )
        code = self._types.get(kind)
        if code is None:
            code = self._types[kind] = len(self._types)
            self.models.code(gpu.model)
            self._type_vendors.append(kind[1])
            self._type_columns = None
        return code

    def _append(self, row: int, kind: int, count: int) -> int:
        if self.size == len(self.rows):
            self._resize(max(64, 2 * self.size))
        entry = self.size
        self.rows[entry], self.types[entry] = row, kind
        self.counts[entry], self.live[entry] = count, True
        self.size += 1
        return entry

    def _resize(self, capacity: int) -> None:
        for name in ("rows", "types", "counts", "live"):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)

    def _compact(self) -> None:
        keep = np.flatnonzero(self.live[: self.size])
        remap = {int(old): new for new, old in enumerate(keep)}
        for name in ("rows", "types", "counts", "live"):
            column = getattr(self, name)
            column[: len(keep)] = column[keep]
        self.size, self._dead = len(keep), 0
        self._entries = {row: [remap[e] for e in entries] for row, entries in self._entries.items()}
