"""An ensemble reduced to arrays: ranked candidates per allocation and the pairwise rules.

Allocations are numbered in the ensemble's order; each has its candidate rows (best
first), their scores and region codes. Two placements are ``estimates[g, h]`` ms apart when
their nodes are in regions ``g`` and ``h`` (see ``latency_table``). ``greedy`` places
allocations one by one, most constrained first, each on its best candidate that keeps
every rule with those already placed. Nothing derived from a problem depends on the order
nodes entered the index: candidates go by rank, regions by name, nodes by DID tiebreak.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from computemesh.matching.engine import Rows
from computemesh.matching.filters import Capacity


@dataclass(frozen=True)
class EnsembleProblem:
    names: list[str]
    amounts: NDArray[np.float64]
    """Allocations x 4, in ``Amounts`` order."""
    candidates: list[Rows]
    scores: list[NDArray[np.float64]]
    regions: list[NDArray[np.int32]]
    estimates: NDArray[np.float64]
    bounds: dict[tuple[int, int], float]
    """Tightest round-trip bound (ms) per allocation pair ``(i, j)``, ``i < j``."""
    together: list[list[int]]
    """Same-region groups, as allocation numbers."""
    apart: list[list[int]]
    """Spread groups, as allocation numbers."""
    free: Capacity
    region_names: list[str]
    """Region code -> name: rules are built in name order, whatever the codes."""
    tiebreak: NDArray[np.int64]
    """Per index row: nodes are taken in this order, whatever their rows."""

    def region_order(self, codes: set[int]) -> list[int]:
        return sorted(codes, key=self.region_names.__getitem__)

    def row_order(self, rows: set[int]) -> list[int]:
        return sorted(rows, key=lambda row: int(self.tiebreak[row]))

    @property
    def has_pairwise_rules(self) -> bool:
        return bool(self.bounds or self.together or self.apart)

    def bound(self, a: int, b: int) -> float | None:
        return self.bounds.get((min(a, b), max(a, b)))

    def share_region(self, a: int, b: int) -> bool:
        return any(a in group and b in group for group in self.together)

    def spread_apart(self, a: int, b: int) -> bool:
        return any(a in group and b in group for group in self.apart)

    def compatible(self, a: int, b: int, position_b: int) -> NDArray[np.bool_]:
        """Which of ``a``'s candidates keep the rules with ``b`` placed at ``position_b``."""
        ok = np.ones(len(self.candidates[a]), dtype=bool)
        region_b = self.regions[b][position_b]
        bound = self.bound(a, b)
        if bound is not None:
            ok &= self.estimates[self.regions[a], region_b] <= bound
        if self.share_region(a, b):
            ok &= self.regions[a] == region_b
        if self.spread_apart(a, b):
            ok &= self.candidates[a] != self.candidates[b][position_b]
        return ok


def greedy(problem: EnsembleProblem) -> list[int] | None:
    """A position in each allocation's candidates meeting every rule, or None if stuck."""
    order = sorted(range(len(problem.names)), key=lambda a: (len(problem.candidates[a]), a))
    free = problem.free.copy()
    chosen: dict[int, int] = {}
    for a in order:
        rows = problem.candidates[a]
        ok = (free[:, rows] >= problem.amounts[a][:, None]).all(axis=0)
        for b, position in chosen.items():
            ok &= problem.compatible(a, b, position)
        hits = np.flatnonzero(ok)
        if hits.size == 0:
            return None
        chosen[a] = int(hits[0])
        free[:, rows[hits[0]]] -= problem.amounts[a]
    return [chosen[a] for a in range(len(problem.names))]


def rule_problems(problem: EnsembleProblem) -> list[str]:
    """Rules no choice of candidates can meet, even taken one at a time."""
    problems = []
    for (a, b), bound in sorted(problem.bounds.items()):
        near = problem.estimates[
            np.ix_(np.unique(problem.regions[a]), np.unique(problem.regions[b]))
        ]
        if not (near <= bound).any():
            best = float(near.min()) if near.size else float("inf")
            shown = "unknown" if not np.isfinite(best) else f"{best:g} ms"
            problems.append(
                f"latency {problem.names[a]}-{problem.names[b]}: no candidate regions within"
                f" {bound:g} ms (closest: {shown})"
            )
    for group in problem.together:
        shared = set.intersection(*(set(problem.regions[a].tolist()) for a in group))
        if not shared:
            names = ", ".join(problem.names[a] for a in group)
            problems.append(f"same_region {names}: no region has candidates for all")
    for group in problem.apart:
        distinct = set(np.concatenate([problem.candidates[a] for a in group]).tolist())
        if len(distinct) < len(group):
            names = ", ".join(problem.names[a] for a in group)
            problems.append(f"spread {names}: only {len(distinct)} distinct candidate nodes")
    return problems


def pair_rules(names: list[str], groups: list[list[str]]) -> list[list[int]]:
    """Groups of allocation names as groups of allocation numbers."""
    number = {name: position for position, name in enumerate(names)}
    return [[number[name] for name in group] for group in groups]
