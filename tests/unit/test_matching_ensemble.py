"""Ensembles: every rule holds in a placement, and CP-SAT misses no placement that exists."""

from __future__ import annotations

from itertools import product
from typing import Any

import numpy as np
import pydantic
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from computemesh.matching import (
    EnsemblePlacement,
    NodeIndex,
    Requirement,
    SolverLimits,
    failed_constraints,
    match_job,
    place_ensemble,
)
from computemesh.matching.cpsat import SCORE_SCALE
from computemesh.models.ensemble import EnsembleSpec
from computemesh.models.market import Advertisement
from tests.unit.test_matching_fleets import DIDS, REGIONS, fleets, index_of, job_specs, some

Fleet = list[tuple[str, Advertisement]]
NAMES = ["a", "b", "c"]
LIMITS = SolverLimits(deterministic_time=5.0, wall_time_s=20.0, seed=1)


@st.composite
def parts_of(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """An allocation that often fits: small, with at most a region or provider rule."""
    rules = st.one_of(
        st.just({}),
        st.fixed_dictionaries({"regions": some(REGIONS)}),
        st.fixed_dictionaries({"providers": some(DIDS[:3], max_size=3)}),
    )
    if draw(st.integers(0, 7)) == 0:
        return draw(job_specs(name=name, replicas=1)).model_dump()
    return {
        "name": name,
        "command": ["run"],
        "resources": {
            "cpu": draw(st.sampled_from([0.5, 1, 2])),
            "memory_mb": draw(st.sampled_from([64, 256])),
            "disk_mb": 1,
        },
        "constraints": draw(rules),
    }


@st.composite
def ensembles(draw: st.DrawFn) -> EnsembleSpec:
    count = draw(st.integers(2, 3))
    names = NAMES[:count]
    parts = [draw(parts_of(name)) for name in names]
    pairs = [(x, y) for i, x in enumerate(names) for y in names[i + 1 :]]
    bounds = [
        {"a": x, "b": y, "max_rtt_ms": draw(st.sampled_from([3.0, 10.0, 30.0, 100.0]))}
        for x, y in draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    ]
    group = st.lists(st.sampled_from(names), min_size=2, max_size=count, unique=True)
    data: dict[str, Any] = {
        "name": "ens",
        "allocations": parts,
        "latency": bounds,
        "same_region": draw(st.lists(group, max_size=1)),
        "spread": draw(st.lists(group, max_size=1)),
    }
    try:
        return EnsembleSpec.model_validate(data)
    except pydantic.ValidationError:
        assume(False)
        raise


def rules_hold(index: NodeIndex, ensemble: EnsembleSpec, chosen: dict[str, str]) -> bool:
    """Every rule of ``ensemble`` for this choice of nodes (the oracle)."""
    estimates = index.region_latency()
    region = {name: index.region[index.row_of(did)] for name, did in chosen.items()}
    for bound in ensemble.latency:
        if not estimates[region[bound.a], region[bound.b]] <= bound.max_rtt_ms:
            return False
    for group in ensemble.same_region:
        if len({region[name] for name in group}) > 1:
            return False
    for group in ensemble.spread:
        if len({chosen[name] for name in group}) < len(group):
            return False
    used: dict[str, np.ndarray] = {}
    for spec in ensemble.allocations:
        did = chosen[spec.name]
        used[did] = used.get(did, np.zeros(4)) + Requirement.of(spec).amounts
    return all(np.all(total <= np.array(index.free_of(did)) + 1e-9) for did, total in used.items())


def best_total(index: NodeIndex, ensemble: EnsembleSpec) -> int | None:
    """The best total (scaled like the solver's) over every valid choice, by brute force."""
    options = [
        [(c.provider, round(c.score * SCORE_SCALE)) for c in match_job(index, spec, limit=99)]
        for spec in ensemble.allocations
    ]
    names = [spec.name for spec in ensemble.allocations]
    best = None
    for combo in product(*options):
        chosen = {name: did for name, (did, _) in zip(names, combo, strict=True)}
        if rules_hold(index, ensemble, chosen):
            total = sum(score for _, score in combo)
            best = total if best is None else max(best, total)
    return best


def scaled_total(result: EnsemblePlacement) -> int:
    return sum(round(score * SCORE_SCALE) for score in result.scores.values())


@settings(max_examples=30, deadline=None)
@given(fleets(max_size=6, busy=False), ensembles())
def test_ensemble_placements_keep_every_rule_and_miss_none(
    fleet: Fleet, ensemble: EnsembleSpec
) -> None:
    index = index_of(fleet)
    result = place_ensemble(index, ensemble, limits=LIMITS)
    event(result.status)
    best = best_total(index, ensemble)
    assert result.placed == (best is not None), result.problems
    if not result.placed:
        assert result.problems
        return
    assert set(result.assignments) == {spec.name for spec in ensemble.allocations}
    assert rules_hold(index, ensemble, result.assignments)
    for spec in ensemble.allocations:
        did = result.assignments[spec.name]
        need = Requirement.of(spec)
        assert failed_constraints(need, index.advertisement(did), did, index.free_of(did)) == []
    if result.status == "optimal":
        assert scaled_total(result) == best
    again = place_ensemble(index_of(list(reversed(fleet))), ensemble, limits=LIMITS)
    assert (again.assignments, again.status) == (result.assignments, result.status)


RTT = {
    ("eu-west", "eu-west"): 1.0,
    ("eu-central", "eu-central"): 1.0,
    ("us-east", "us-east"): 1.0,
    ("eu-west", "eu-central"): 15.0,
    ("eu-west", "us-east"): 80.0,
    ("eu-central", "us-east"): 90.0,
}


def rtt(a: str, b: str) -> float:
    return RTT.get((a, b)) or RTT[(b, a)]


def node(region: str, price: float, cpus: int = 4) -> Advertisement:
    latency = {other: rtt(region, other) for other in ("eu-west", "eu-central", "us-east")}
    return Advertisement.model_validate(
        {
            "hardware": {
                "cpu_count": cpus,
                "architecture": "x86_64",
                "memory_mb": 8192,
                "disk_mb": 9999,
            },
            "region": region,
            "executors": ["process"],
            "price_per_cpu_hour": price,
            "sandboxed": True,
            "free": {"cpu": cpus, "memory_mb": 8192, "disk_mb": 9999, "gpu_count": 0},
            "version": "0.1.0",
            "latency_ms": latency,
        }
    )


X, Y, Z, W = DIDS[:4]


def crafted_index() -> NodeIndex:
    index = NodeIndex()
    for did, advert in (
        (X, node("us-east", 0.05)),
        (Y, node("eu-west", 0.40)),
        (Z, node("eu-west", 0.05)),
        (W, node("eu-central", 0.40)),
    ):
        index.upsert(did, advert, seen_at=0.0)
    return index


def part(name: str, providers: list[str], **resources: Any) -> dict[str, Any]:
    return {
        "name": name,
        "command": ["run"],
        "resources": resources or {"cpu": 1},
        "constraints": {"providers": providers},
    }


def test_cp_sat_finds_what_the_greedy_cannot() -> None:
    ensemble = EnsembleSpec.model_validate(
        {
            "name": "pair",
            "allocations": [part("a", [X, Y]), part("b", [Z, W])],
            "latency": [{"a": "a", "b": "b", "max_rtt_ms": 10}],
        }
    )
    result = place_ensemble(crafted_index(), ensemble)
    assert result.placed and result.status == "optimal"
    assert result.assignments == {"a": Y, "b": Z}


def test_same_region_and_spread_together() -> None:
    ensemble = EnsembleSpec.model_validate(
        {
            "name": "trio",
            "allocations": [part(n, [X, Y, Z, W]) for n in ("a", "b", "c")],
            "same_region": [["a", "b"]],
            "spread": [["a", "b", "c"]],
        }
    )
    result = place_ensemble(crafted_index(), ensemble)
    assert result.placed
    assert {result.assignments["a"], result.assignments["b"]} == {Y, Z}
    assert len(set(result.assignments.values())) == 3


def test_rules_no_candidates_can_meet_are_named() -> None:
    ensemble = EnsembleSpec.model_validate(
        {
            "name": "far",
            "allocations": [part("a", [X]), part("b", [Z])],
            "latency": [{"a": "a", "b": "b", "max_rtt_ms": 10}],
        }
    )
    result = place_ensemble(crafted_index(), ensemble)
    assert not result.placed and result.status == "infeasible"
    assert result.problems == ("latency a-b: no candidate regions within 10 ms (closest: 80 ms)",)
    spread = EnsembleSpec.model_validate(
        {
            "name": "crowd",
            "allocations": [part(n, [X, Y]) for n in ("a", "b", "c")],
            "spread": [["a", "b", "c"]],
        }
    )
    crowded = place_ensemble(crafted_index(), spread)
    assert crowded.problems == ("spread a, b, c: only 2 distinct candidate nodes",)


def test_capacity_is_shared_between_allocations() -> None:
    ensemble = EnsembleSpec.model_validate(
        {"name": "big", "allocations": [part(n, [X, Y], cpu=3) for n in ("a", "b", "c")]}
    )
    result = place_ensemble(crafted_index(), ensemble)
    assert not result.placed
    two = EnsembleSpec.model_validate(
        {"name": "big", "allocations": [part(n, [X, Y], cpu=3) for n in ("a", "b")]}
    )
    placed = place_ensemble(crafted_index(), two)
    assert placed.placed and placed.status == "greedy"
    assert sorted(placed.assignments.values()) == sorted([X, Y])


def test_an_allocation_without_candidates_is_explained() -> None:
    ensemble = EnsembleSpec.model_validate(
        {
            "name": "gpu",
            "allocations": [
                part("a", [X]),
                {"name": "b", "command": ["x"], "resources": {"gpu_count": 1}},
            ],
        }
    )
    result = place_ensemble(crafted_index(), ensemble)
    assert result.status == "no_candidates"
    assert result.problems == ("b: no node meets its hard constraints",)
    explanation = result.explanations["b"]
    assert not explanation.placeable
    assert next(e.name for e in explanation.effects if e.remaining == 0) == "gpu"
    assert result.to_dict()["explanations"]["b"]["feasible"] == 0
