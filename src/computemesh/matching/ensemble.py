"""Placing an ensemble: every allocation placed under its pairwise rules, or none.

Each allocation is first filtered and ranked on its own (at most ``max_candidates`` kept,
best first). Without pairwise rules the greedy of ``ensemble_problem`` decides. With
latency bounds, same-region or spread rules, CP-SAT (``cpsat``) searches for the best
total score, seeded with the greedy answer when there is one; so is any ensemble the
greedy could not fit. Nothing is reserved: the caller reserves what it contracts.

Before either, each allocation keeps only its best ``A`` candidates in each region (``A``
allocations in all). This loses no placement and no score: the rules see regions, not
nodes, and in any placement the other ``A - 1`` allocations occupy at most ``A - 1`` nodes,
so one of an allocation's best ``A`` in its region is free, fits it alone, and scores at
least as well as the node it had.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from computemesh.matching.cpsat import SolverLimits, solve
from computemesh.matching.engine import score_rows, top_positions
from computemesh.matching.ensemble_problem import EnsembleProblem, greedy, pair_rules, rule_problems
from computemesh.matching.explain import Explanation, explain
from computemesh.matching.filters import feasible_mask
from computemesh.matching.index import NodeIndex
from computemesh.matching.requirement import Requirement
from computemesh.matching.scoring import rank_keys
from computemesh.models.ensemble import EnsembleSpec

MAX_CANDIDATES = 1000


@dataclass(frozen=True)
class EnsemblePlacement:
    """The outcome: ``assignments`` (allocation -> provider DID) when ``placed``.

    ``status`` is ``optimal`` or ``feasible`` (CP-SAT), ``greedy`` (no search needed),
    or why nothing was placed: ``no_candidates``, ``infeasible``, ``unknown`` (the search
    ran out of time without an answer). ``problems`` and ``explanations`` say why.
    """

    ensemble: str
    placed: bool
    status: str
    assignments: dict[str, str]
    scores: dict[str, float]
    solve_ms: float = 0.0
    problems: tuple[str, ...] = ()
    explanations: dict[str, Explanation] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ensemble": self.ensemble,
            "placed": self.placed,
            "status": self.status,
            "assignments": self.assignments,
            "scores": self.scores,
            "solve_ms": self.solve_ms,
            "problems": list(self.problems),
            "explanations": {name: e.to_dict() for name, e in self.explanations.items()},
        }


def place_ensemble(
    index: NodeIndex,
    ensemble: EnsembleSpec,
    *,
    max_candidates: int = MAX_CANDIDATES,
    limits: SolverLimits | None = None,
) -> EnsemblePlacement:
    """Place every allocation of ``ensemble`` on ``index``, or explain why not."""
    if max_candidates < 1:
        raise ValueError("max_candidates must be at least 1")
    needs = [Requirement.of(spec) for spec in ensemble.allocations]
    problem = build_problem(index, ensemble, needs, max_candidates)
    empty = [need for need, rows in zip(needs, problem.candidates, strict=True) if not rows.size]
    if empty:
        return _failed(
            ensemble,
            "no_candidates",
            [f"{need.name}: no node meets its hard constraints" for need in empty],
            explanations={need.name: explain(index, need) for need in empty},
        )
    seed = greedy(problem)
    if seed is not None and not problem.has_pairwise_rules:
        return _placed(index, ensemble, problem, seed, "greedy", 0.0)
    outcome = solve(problem, seed, limits or SolverLimits())
    if outcome.positions is not None:
        return _placed(index, ensemble, problem, outcome.positions, outcome.status, outcome.wall_ms)
    if seed is not None:
        return _placed(index, ensemble, problem, seed, "greedy", outcome.wall_ms)
    reasons = rule_problems(problem) or [
        "the allocations cannot all be placed together within the rules and free capacity"
    ]
    return _failed(ensemble, outcome.status, reasons, solve_ms=outcome.wall_ms)


def build_problem(
    index: NodeIndex, ensemble: EnsembleSpec, needs: list[Requirement], max_candidates: int
) -> EnsembleProblem:
    """Rank each allocation's candidates and gather the rules as arrays."""
    candidates, scores, regions = [], [], []
    for need in needs:
        rows = np.flatnonzero(feasible_mask(index, need))
        row_scores = score_rows(index, need.weights, rows)
        best = top_positions(rank_keys(row_scores, index.tiebreak[rows]), max_candidates)
        best = best[_best_per_region(index.region[rows[best]], len(needs))]
        candidates.append(rows[best])
        scores.append(row_scores[best])
        regions.append(index.region[rows[best]])
    names = [need.name for need in needs]
    number = {name: position for position, name in enumerate(names)}
    bounds: dict[tuple[int, int], float] = {}
    for rule in ensemble.latency:
        pair = tuple(sorted((number[rule.a], number[rule.b])))
        key = (pair[0], pair[1])
        bounds[key] = min(bounds.get(key, rule.max_rtt_ms), rule.max_rtt_ms)
    return EnsembleProblem(
        names=names,
        amounts=np.array([need.amounts for need in needs], dtype=np.float64),
        candidates=candidates,
        scores=scores,
        regions=regions,
        estimates=index.region_latency(),
        bounds=bounds,
        together=pair_rules(names, ensemble.same_region),
        apart=pair_rules(names, ensemble.spread),
        free=index.free[:, : index.size],
        region_names=list(index.regions.values),
        tiebreak=index.tiebreak,
    )


def _best_per_region(regions: NDArray[np.int32], keep: int) -> NDArray[np.intp]:
    """Positions (in rank order) of the first ``keep`` candidates of each region."""
    order = np.argsort(regions, kind="stable")
    grouped = regions[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(grouped)]))
    return np.sort(order[np.arange(len(grouped)) - first < keep])


def _placed(
    index: NodeIndex,
    ensemble: EnsembleSpec,
    problem: EnsembleProblem,
    positions: list[int],
    status: str,
    solve_ms: float,
) -> EnsemblePlacement:
    return EnsemblePlacement(
        ensemble=ensemble.name,
        placed=True,
        status=status,
        assignments={
            name: index.did_at(int(problem.candidates[a][positions[a]]))
            for a, name in enumerate(problem.names)
        },
        scores={
            name: float(problem.scores[a][positions[a]]) for a, name in enumerate(problem.names)
        },
        solve_ms=solve_ms,
    )


def _failed(
    ensemble: EnsembleSpec,
    status: str,
    problems: list[str],
    *,
    explanations: dict[str, Explanation] | None = None,
    solve_ms: float = 0.0,
) -> EnsemblePlacement:
    return EnsemblePlacement(
        ensemble=ensemble.name,
        placed=False,
        status=status,
        assignments={},
        scores={},
        solve_ms=solve_ms,
        problems=tuple(problems),
        explanations=explanations or {},
    )
