"""Soft preferences: each quality of a node scored from 0 (worst) to 1 (best).

The same formulas serve one node at a time (Python floats) and whole columns (NumPy
arrays), so the index can keep per-node scores ready and references can recompute them.

    price         1 / (1 + price / PRICE_REFERENCE)       0.5 at a typical price
    latency       1 / (1 + rtt / LATENCY_REFERENCE_MS)    0 when unknown
    reputation    the advertised reputation               NEUTRAL when unknown
    load          free cpu / total cpu                    1 when idle
    success_rate  (successes + 1) / (attempts + 2)        NEUTRAL with no history

A node's score is the weighted mean of the qualities with a weight above zero. Candidates
rank by score, quantised to ``2**-SCORE_BITS``, then by a hash of their DID (``tiebreak``),
so the order never depends on where a node sits in the index.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from computemesh.matching.requirement import Weights

PRICE_REFERENCE = 0.10
"""A typical price per cpu-hour (the node's default)."""
LATENCY_REFERENCE_MS = 50.0
NEUTRAL = 0.5
SCORE_BITS = 20
TIEBREAK_BITS = 42
QUALITIES = ("price", "latency", "reputation", "load", "success_rate")

Number = TypeVar("Number", float, NDArray[np.float64])


def price_score(price: Number) -> Number:
    return 1.0 / (1.0 + price / PRICE_REFERENCE)


def latency_score(rtt_ms: Number) -> Number:
    """NaN (unknown) scores 0 for arrays; callers pass no None for scalars."""
    score = 1.0 / (1.0 + rtt_ms / LATENCY_REFERENCE_MS)
    if isinstance(score, np.ndarray):
        return np.nan_to_num(score, nan=0.0)
    return score


def reputation_score(reputation: float | None) -> float:
    return NEUTRAL if reputation is None else reputation


def success_score(successes: int, attempts: int) -> float:
    return (successes + 1) / (attempts + 2)


def weight_vector(weights: Weights) -> tuple[float, float, float, float, float]:
    """Weights in ``QUALITIES`` order, divided by their sum (all zero when none is set)."""
    raw = (weights.price, weights.latency, weights.reputation, weights.load, weights.success_rate)
    total = sum(raw)
    if total <= 0:
        return raw
    return (raw[0] / total, raw[1] / total, raw[2] / total, raw[3] / total, raw[4] / total)


StaticWeights = tuple[float, float, float, float]
"""Weights of the job-independent qualities, in ``index.SCORE_ROWS`` order."""


def static_weights(weights: Weights) -> StaticWeights:
    w = weight_vector(weights)
    return (w[0], w[2], w[3], w[4])


def weighted_sum(weights: StaticWeights, qualities: NDArray[np.float64]) -> NDArray[np.float64]:
    """Column by column: ``w0*q0 (+ w1*q1) (+ w2*q2) (+ w3*q3)``, zero weights skipped.

    Element-wise operations only (no BLAS product), so every column gets exactly the
    result ``weighted_one`` gives for it, wherever it sits.
    """
    total: NDArray[np.float64] = weights[0] * qualities[0]
    for weight, quality in zip(weights[1:], qualities[1:], strict=True):
        if weight:
            total += weight * quality
    return total


def weighted_one(weights: StaticWeights, qualities: list[float]) -> float:
    """``weighted_sum`` for one column, with the same operations in the same order."""
    total = weights[0] * qualities[0]
    for weight, quality in zip(weights[1:], qualities[1:], strict=True):
        if weight:
            total += weight * quality
    return total


def did_tiebreak(did: str) -> int:
    """A stable ``TIEBREAK_BITS``-bit number from the DID: the order among equal scores."""
    digest = hashlib.blake2b(did.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - TIEBREAK_BITS)


def rank_keys(scores: NDArray[np.float64], tiebreak: NDArray[np.int64]) -> NDArray[np.int64]:
    """One int64 per candidate; a larger key ranks first. ``scores`` lie in 0..1."""
    quantised = np.rint(np.clip(scores, 0.0, 1.0) * (1 << SCORE_BITS)).astype(np.int64)
    return (quantised << TIEBREAK_BITS) | tiebreak


@dataclass(frozen=True)
class ScoreBreakdown:
    """How one candidate's score came about: each quality's score and normalised weight."""

    total: float
    qualities: dict[str, float]
    weights: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        return {"total": self.total, "qualities": self.qualities, "weights": self.weights}
