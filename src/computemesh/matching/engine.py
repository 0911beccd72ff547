"""Placing one job: filter every indexed node, score the survivors, rank them.

``match_job`` is pure: it reads the index and returns candidates; reserving capacity on the
chosen node is the caller's decision (``NodeIndex.reserve``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from computemesh.matching.filters import Capacity, feasible_mask
from computemesh.matching.index import NodeIndex
from computemesh.matching.requirement import Requirement, Weights
from computemesh.matching.scoring import (
    QUALITIES,
    SCORE_BITS,
    ScoreBreakdown,
    rank_keys,
    static_weights,
    weight_vector,
)
from computemesh.models.job import JobSpec

Rows = NDArray[np.intp]
FIRST_MARGIN = 1.0 / 256
"""How far below the best score ``best_positions`` looks first."""


@dataclass(frozen=True)
class Candidate:
    """A node that meets every hard constraint, with how it scored."""

    provider: str
    score: float
    breakdown: ScoreBreakdown

    def to_dict(self) -> dict[str, object]:
        return {"provider": self.provider, "score": self.score, **self.breakdown.to_dict()}


def as_requirement(job: JobSpec | Requirement) -> Requirement:
    return job if isinstance(job, Requirement) else Requirement.of(job)


def match_job(
    index: NodeIndex,
    job: JobSpec | Requirement,
    *,
    limit: int = 10,
    free: Capacity | None = None,
) -> list[Candidate]:
    """The best ``limit`` nodes for ``job``, best first; empty when none fits.

    Order: score (quantised, see ``scoring``) descending, then the DID tiebreak. ``free``
    replaces the index's free capacity (a ``4 x index.size`` matrix).
    """
    need = as_requirement(job)
    rows = np.flatnonzero(feasible_mask(index, need, free))
    if rows.size == 0 or limit <= 0:
        return []
    scores = score_rows(index, need.weights, rows)
    best = best_positions(scores, rows, index.tiebreak, limit)
    return [
        Candidate(
            provider=index.did_at(int(rows[p])),
            score=float(scores[p]),
            breakdown=breakdown(index, need.weights, int(rows[p]), float(scores[p])),
        )
        for p in best
    ]


def best_positions(
    scores: NDArray[np.float64], rows: Rows, tiebreak: NDArray[np.int64], limit: int
) -> Rows:
    """Positions of the ``limit`` best ``rank_keys``, best first, without keying them all.

    Only scores within a margin of the best are keyed, the margin doubling until at
    least ``limit`` are in; the margin's floor is rounded down to a quantum boundary so
    that every score quantising like the ``limit``-th best is keyed too.
    """
    if limit >= len(scores):
        return top_positions(rank_keys(scores, tiebreak[rows]), limit)
    quantum = 1.0 / (1 << SCORE_BITS)
    best, margin = float(scores.max()), FIRST_MARGIN
    while True:
        floor = (np.rint((best - margin) / quantum) - 0.5) * quantum
        near = np.flatnonzero(scores >= floor)
        if len(near) >= limit:
            break
        margin *= 4
    chosen = top_positions(rank_keys(scores[near], tiebreak[rows[near]]), limit)
    return near[chosen]


def score_rows(index: NodeIndex, weights: Weights, rows: Rows) -> NDArray[np.float64]:
    """Each row's weighted score in 0..1 (see ``scoring``)."""
    scores = index.weighted_scores(static_weights(weights))[rows]
    latency = _latency_column(index, weights)
    share = weight_vector(weights)[1]
    if latency is not None and share > 0:
        scores += share * latency[rows]
    return scores


def top_positions(keys: NDArray[np.int64], limit: int) -> Rows:
    """Positions of the ``limit`` largest keys, largest first."""
    if limit >= len(keys):
        return np.argsort(-keys)
    part = np.argpartition(-keys, limit - 1)[:limit]
    return part[np.argsort(-keys[part])]


def breakdown(index: NodeIndex, weights: Weights, row: int, total: float) -> ScoreBreakdown:
    """One row's qualities and normalised weights; ``total`` is its score."""
    latency = _latency_column(index, weights)
    price, reputation, load, success = index.scores[:, row].tolist()
    qualities = {
        "price": price,
        "latency": 0.0 if latency is None else float(latency[row]),
        "reputation": reputation,
        "load": load,
        "success_rate": success,
    }
    normalised = dict(zip(QUALITIES, weight_vector(weights), strict=True))
    return ScoreBreakdown(total=total, qualities=qualities, weights=normalised)


def _latency_column(index: NodeIndex, weights: Weights) -> NDArray[np.float64] | None:
    if weights.near is None:
        return None
    code = index.regions.find(weights.near)
    return None if code < 0 else index.latency.score_column(code)
