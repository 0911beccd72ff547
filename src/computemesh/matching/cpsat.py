"""An ensemble as a CP-SAT model: one boolean per (allocation, candidate), best total score.

    exactly one candidate per allocation
    region[a, g] = sum of a's candidates in region g         (allocations under a rule)
    latency bound L between a and b: region[a, g] implies some region[b, h] with
        est(g, h) <= L, and the same from b's side (tighter than forbidding pairs)
    same region a, b: region[a, g] = region[b, g] for every region g
    spread: at most one of a group's allocations on any one node
    capacity: on a node several allocations may take, their sum fits its free capacity
    maximise the sum of the chosen candidates' scores (scaled to integers)

The search runs with the full linear relaxation (``linearization_level`` 2) and without
presolve probing: on ensembles of ten allocations over a thousand candidates each, the
defaults spent the whole budget probing; these settings prove optimality in a fraction.

Capacity is counted in integers: cpu in thousandths (needs rounded up, free rounded down),
memory and disk in MB, GPUs whole. The search is single-threaded with a fixed seed and
stops at a deterministic-time limit, so the same inputs give the same answer; the
wall-clock limit is a safety net that, if reached first, may not reproduce.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from itertools import pairwise

from ortools.sat.python import cp_model

from computemesh.matching.ensemble_problem import EnsembleProblem

SCORE_SCALE = 10_000
CPU_SCALE = 1000

BoolVar = cp_model.IntVar


@dataclass(frozen=True)
class SolveOutcome:
    positions: list[int] | None
    status: str
    wall_ms: float


@dataclass(frozen=True)
class SolverLimits:
    """How long the search may run; ``seed`` fixes its randomness."""

    deterministic_time: float = 2.0
    wall_time_s: float = 10.0
    seed: int = 0


def solve(problem: EnsembleProblem, hint: list[int] | None, limits: SolverLimits) -> SolveOutcome:
    """Solve ``problem``; ``hint`` (a position per allocation) seeds the search.

    ``wall_ms`` covers building the model and searching.
    """
    started = time.perf_counter()
    model = cp_model.CpModel()
    chosen = [
        [model.new_bool_var(f"x{a}_{k}") for k in range(len(rows))]
        for a, rows in enumerate(problem.candidates)
    ]
    for options in chosen:
        model.add_exactly_one(options)
    regions = _region_literals(model, problem, chosen)
    _add_latency(model, problem, regions)
    _add_same_region(model, problem, regions)
    _add_spread(model, problem, chosen)
    _add_capacity(model, problem, chosen)
    weights = [(scores * SCORE_SCALE).round().astype(int).tolist() for scores in problem.scores]
    model.maximize(
        cp_model.LinearExpr.weighted_sum(
            [x for options in chosen for x in options], [w for row in weights for w in row]
        )
    )
    if hint is not None:
        _add_hint(model, problem, chosen, regions, hint)
    return _run(model, chosen, limits, started)


def _region_literals(
    model: cp_model.CpModel, problem: EnsembleProblem, chosen: list[list[BoolVar]]
) -> dict[int, dict[int, BoolVar]]:
    ruled = {a for pair in problem.bounds for a in pair}
    ruled |= {a for group in problem.together for a in group}
    literals: dict[int, dict[int, BoolVar]] = {}
    for a in sorted(ruled):
        literals[a] = {}
        codes = problem.regions[a].tolist()
        for region in problem.region_order(set(codes)):
            indicator = model.new_bool_var(f"r{a}_{region}")
            members = [chosen[a][k] for k, code in enumerate(codes) if code == region]
            model.add(cp_model.LinearExpr.sum(members) == indicator)
            literals[a][region] = indicator
    return literals


def _add_latency(
    model: cp_model.CpModel, problem: EnsembleProblem, regions: dict[int, dict[int, BoolVar]]
) -> None:
    for (a, b), bound in sorted(problem.bounds.items()):
        for one, other, flip in ((a, b, False), (b, a, True)):
            for g, here in regions[one].items():
                near = [
                    there
                    for h, there in regions[other].items()
                    if problem.estimates[(h, g) if flip else (g, h)] <= bound
                ]
                model.add_bool_or([here.negated(), *near])


def _add_same_region(
    model: cp_model.CpModel, problem: EnsembleProblem, regions: dict[int, dict[int, BoolVar]]
) -> None:
    for group in problem.together:
        for a, b in pairwise(group):
            for region in problem.region_order(set(regions[a]) | set(regions[b])):
                left, right = regions[a].get(region), regions[b].get(region)
                if left is not None and right is not None:
                    model.add(left == right)
                elif left is not None:
                    model.add(left == 0)
                elif right is not None:
                    model.add(right == 0)


def _add_spread(
    model: cp_model.CpModel, problem: EnsembleProblem, chosen: list[list[BoolVar]]
) -> None:
    for group in problem.apart:
        by_row: dict[int, list[BoolVar]] = {}
        for a in group:
            for k, row in enumerate(problem.candidates[a].tolist()):
                by_row.setdefault(row, []).append(chosen[a][k])
        for row in problem.row_order(set(by_row)):
            if len(by_row[row]) > 1:
                model.add_at_most_one(by_row[row])


def _add_capacity(
    model: cp_model.CpModel, problem: EnsembleProblem, chosen: list[list[BoolVar]]
) -> None:
    by_row: dict[int, list[tuple[int, BoolVar]]] = {}
    for a, rows in enumerate(problem.candidates):
        for k, row in enumerate(rows.tolist()):
            by_row.setdefault(row, []).append((a, chosen[a][k]))
    for row in problem.row_order(set(by_row)):
        takers = by_row[row]
        if len(takers) < 2:
            continue
        for resource in range(4):
            needs = [_scaled_need(problem.amounts[a][resource], resource) for a, _ in takers]
            room = _scaled_free(problem.free[resource, row], resource)
            if sum(needs) > room:
                model.add(cp_model.LinearExpr.weighted_sum([x for _, x in takers], needs) <= room)


def _scaled_need(amount: float, resource: int) -> int:
    return math.ceil(amount * CPU_SCALE - 1e-9) if resource == 0 else math.ceil(amount)


def _scaled_free(amount: float, resource: int) -> int:
    return math.floor(amount * CPU_SCALE + 1e-9) if resource == 0 else math.floor(amount)


def _add_hint(
    model: cp_model.CpModel,
    problem: EnsembleProblem,
    chosen: list[list[BoolVar]],
    regions: dict[int, dict[int, BoolVar]],
    hint: list[int],
) -> None:
    for a, options in enumerate(chosen):
        for k, literal in enumerate(options):
            model.add_hint(literal, k == hint[a])
    for a, indicators in regions.items():
        picked = int(problem.regions[a][hint[a]])
        for region, literal in indicators.items():
            model.add_hint(literal, region == picked)


def _run(
    model: cp_model.CpModel, chosen: list[list[BoolVar]], limits: SolverLimits, started: float
) -> SolveOutcome:
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.linearization_level = 2
    solver.parameters.cp_model_probing_level = 0
    solver.parameters.random_seed = limits.seed
    solver.parameters.max_deterministic_time = limits.deterministic_time
    solver.parameters.max_time_in_seconds = limits.wall_time_s
    status = solver.solve(model)
    wall_ms = (time.perf_counter() - started) * 1000
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return SolveOutcome(None, solver.status_name(status).lower(), wall_ms)
    positions = [
        next(k for k, literal in enumerate(options) if solver.boolean_value(literal))
        for options in chosen
    ]
    return SolveOutcome(positions, solver.status_name(status).lower(), wall_ms)
