"""Placing many jobs at once, with capacity accounting: a deterministic greedy.

Jobs are taken largest first (GPUs, then cpu, memory, disk; ties by job id), whatever the
order given. Each takes the best-ranked nodes that still have room for it, one distinct
node per replica, all replicas or none. Several jobs may share a node; no node is ever
given more than its free capacity.

Scores are those of the index at the start of the batch (load included): capacity is
tracked exactly as jobs are placed, ranking is not recomputed. Jobs with the same hard
filters and weights share one filtered, ranked candidate list, walked in windows.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from computemesh.matching.engine import Rows, as_requirement, score_rows
from computemesh.matching.explain import Explanation, explain
from computemesh.matching.filters import Capacity, static_mask
from computemesh.matching.index import NodeIndex
from computemesh.matching.requirement import Amounts, Filters, Requirement, Weights
from computemesh.matching.scoring import rank_keys
from computemesh.models.job import JobSpec

QUICK = 8
"""Candidates checked one by one before scanning with NumPy."""
WINDOW = 64
"""Candidates checked per NumPy step; a step that finds too few looks at four times as many."""
PREFIX = 2048
"""Candidates ranked up front; the rest are ranked only if a job walks past them."""


class Placement(NamedTuple):
    """Where one job's replicas go, best first, with each node's score."""

    job_id: str
    providers: tuple[str, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class BatchResult:
    """Placements by job id; jobs not placed (in the order tried), explained if asked."""

    placements: dict[str, Placement]
    unplaced: tuple[str, ...]
    explanations: dict[str, Explanation] = field(default_factory=dict)


def assign_batch(
    index: NodeIndex,
    jobs: Sequence[tuple[str, JobSpec | Requirement]],
    *,
    explain_unplaced: bool = False,
) -> BatchResult:
    """Place ``jobs`` (``(job id, spec)``, ids unique) onto ``index``; the index is unchanged.

    With ``explain_unplaced`` each job left out gets an explanation computed against the
    capacity left once the batch was done.
    """
    with collector_paused():
        return _assign(index, jobs, explain_unplaced=explain_unplaced)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a bulk of small acyclic allocations.

    A batch creates tens of thousands of tuples and lists; with a large heap (an index of
    advertisements) the collector's passes would cost more than the batch itself.
    Reference counting still frees everything; the collector is restored on exit.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _assign(
    index: NodeIndex,
    jobs: Sequence[tuple[str, JobSpec | Requirement]],
    *,
    explain_unplaced: bool,
) -> BatchResult:
    needs = [(job_id, as_requirement(job)) for job_id, job in jobs]
    if len({job_id for job_id, _ in needs}) != len(needs):
        raise ValueError("job ids must be unique within a batch")
    needs = _largest_first(needs)
    free = _FreeCapacity(index.free[:, : index.size])
    placements, unplaced = {}, []
    dids = index.dids
    for (job_id, need), group in zip(needs, _groups(index, needs, free.matrix), strict=True):
        positions = group.take(free, need.amounts, need.replicas)
        if positions is None:
            unplaced.append(job_id)
        elif len(positions) == 1:
            row = group.order[positions[0]]
            free.take_one(row, need.amounts)
            placements[job_id] = Placement(
                job_id, (dids[row] or "",), (group.order_scores[positions[0]],)
            )
        else:
            rows = [group.order[p] for p in positions]
            for row in rows:
                free.take_one(row, need.amounts)
            placements[job_id] = Placement(
                job_id,
                tuple([dids[row] or "" for row in rows]),
                tuple([group.order_scores[p] for p in positions]),
            )
    explanations = {}
    if explain_unplaced:
        by_id, left = dict(needs), free.synced()
        explanations = {job_id: explain(index, by_id[job_id], free=left) for job_id in unplaced}
    return BatchResult(placements, tuple(unplaced), explanations)


def _largest_first(needs: list[tuple[str, Requirement]]) -> list[tuple[str, Requirement]]:
    """By GPUs, cpu, memory, disk, all descending, then job id."""
    if not needs:
        return needs
    amounts = np.array([need.amounts for _, need in needs])
    ids = np.array([job_id for job_id, _ in needs])
    order = np.lexsort((ids, -amounts[:, 2], -amounts[:, 1], -amounts[:, 0], -amounts[:, 3]))
    return [needs[i] for i in order.tolist()]


def _groups(
    index: NodeIndex, needs: list[tuple[str, Requirement]], free: Capacity
) -> list[_CandidateList]:
    """The candidate list of each job: one per distinct (filters, weights)."""
    keys = [(need.filters, need.weights) for _, need in needs]
    members: dict[tuple[Filters, Weights], list[Requirement]] = {}
    for key, (_, need) in zip(keys, needs, strict=True):
        members.setdefault(key, []).append(need)
    lists = {key: _CandidateList(index, group, free) for key, group in members.items()}
    return [lists[key] for key in keys]


class _FreeCapacity:
    """Free capacity during a batch: Python lists for quick single-node checks, a NumPy
    matrix for scanning many nodes at once, synchronised lazily."""

    def __init__(self, matrix: Capacity) -> None:
        self.matrix = matrix.copy()
        self.rows = _RowLists(self.matrix)
        self._dirty: set[int] = set()

    def take_one(self, row: int, amounts: Amounts) -> None:
        left = self.rows[row]
        left[0] -= amounts[0]
        left[1] -= amounts[1]
        left[2] -= amounts[2]
        left[3] -= amounts[3]
        self._dirty.add(row)

    def synced(self) -> Capacity:
        """The matrix, with every change made so far."""
        if self._dirty:
            rows = sorted(self._dirty)
            self.matrix[:, rows] = np.array([self.rows[row] for row in rows]).T
            self._dirty.clear()
        return self.matrix


class _RowLists(dict[int, list[float]]):
    """``row -> [cpu, memory, disk, gpus]`` as Python floats, made on first use."""

    def __init__(self, matrix: Capacity) -> None:
        super().__init__()
        self._matrix = matrix

    def __missing__(self, row: int) -> list[float]:
        left: list[float] = self._matrix[:, row].tolist()
        self[row] = left
        return left


class _CandidateList:
    """One group's candidates, ranked, walked by ``take``.

    Candidates pass the group's static checks and, at the start of the batch, have room
    for the group's smallest amounts (free capacity only shrinks during a batch). For each
    distinct amount vector the list remembers where its last first fit was: nothing
    before that position can fit the same amounts again.
    """

    def __init__(self, index: NodeIndex, group: list[Requirement], free: Capacity) -> None:
        least = np.array([need.amounts for need in group]).min(axis=0)
        self._least = (float(least[0]), float(least[1]), float(least[2]), float(least[3]))
        mask = static_mask(index, group[0])
        for resource in range(4):
            mask &= free[resource] >= self._least[resource]
        rows = np.flatnonzero(mask)
        scores = score_rows(index, group[0].weights, rows)
        self._rows, self._scores = rows, scores
        self._keys = rank_keys(scores, index.tiebreak[rows])
        self._resume: dict[Amounts, int] = {}
        self.start = 0
        self._rank(min(PREFIX, len(rows)))

    def take(self, free: _FreeCapacity, amounts: Amounts, count: int) -> list[int] | None:
        """Positions in ``order`` of the first ``count`` ranked rows with room for
        ``amounts``; None if fewer fit. The first ``QUICK`` are checked one by one."""
        start = self._skip_exhausted(free)
        resume = self._resume.get(amounts, 0)
        position = resume if resume > start else start
        cpu, memory, disk, gpus = amounts
        order, rows = self.order, free.rows
        found = []
        end = min(position + QUICK, len(order))
        while position < end:
            left = rows[order[position]]
            position += 1
            if left[0] >= cpu and left[1] >= memory and left[2] >= disk and left[3] >= gpus:
                found.append(position - 1)
                if len(found) == count:
                    self._resume[amounts] = found[0]
                    return found
        found += self._scan_wide(free, amounts, count - len(found), position)
        if len(found) < count:
            self._resume[amounts] = len(self._rows)
            return None
        self._resume[amounts] = found[0]
        return found

    def _scan_wide(
        self, free: _FreeCapacity, amounts: Amounts, count: int, position: int
    ) -> list[int]:
        matrix, need = free.synced(), np.asarray(amounts)[:, None]
        found: list[int] = []
        width = WINDOW
        while len(found) < count and position < len(self._rows):
            if position + width > len(self.order) < len(self._rows):
                self._rank(len(self._rows))
            rows = self._order_array[position : position + width]
            fits = np.flatnonzero((matrix[:, rows] >= need).all(axis=0))
            found += (fits[: count - len(found)] + position).tolist()
            position, width = position + width, width * 4
        return found

    def _skip_exhausted(self, free: _FreeCapacity) -> int:
        """Move ``start`` past candidates too full for any job of the group; return it."""
        cpu, memory, disk, gpus = self._least
        order, start = self.order, self.start
        while start < len(order):
            left = free.rows[order[start]]
            if left[0] >= cpu and left[1] >= memory and left[2] >= disk and left[3] >= gpus:
                break
            start += 1
        self.start = start
        return start

    def _rank(self, count: int) -> None:
        keys = -self._keys
        if count >= len(keys):
            ranked = np.argsort(keys, kind="stable")
        else:
            top = np.argpartition(keys, count - 1)[:count]
            ranked = top[np.argsort(keys[top], kind="stable")]
        self._order_array: Rows = self._rows[ranked]
        self.order: list[int] = self._order_array.tolist()
        self.order_scores: list[float] = self._scores[ranked].tolist()
