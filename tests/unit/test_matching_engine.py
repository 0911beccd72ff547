"""The vectorized engine against the per-offer semantics, on generated fleets and jobs."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from computemesh.matching import (
    CHECK_ORDER,
    NodeIndex,
    Requirement,
    assign_batch,
    explain,
    failed_constraints,
    match_job,
)
from computemesh.matching.filters import constraint_masks
from computemesh.models.job import JobSpec
from computemesh.models.market import Advertisement
from tests.unit.test_matching_fleets import FAST, fleets, index_of, job_specs, jobs

Fleet = list[tuple[str, Advertisement]]
CAPACITY = {"cpu", "memory", "gpu", "disk"}
TOLERANCE = 1e-9


def failures(index: NodeIndex, need: Requirement, did: str) -> dict[str, str]:
    return dict(failed_constraints(need, index.advertisement(did), did, index.free_of(did)))


def reserve_some(index: NodeIndex, data: st.DataObject) -> None:
    """Hold part of some nodes' capacity, so free differs from what was advertised."""
    for did in index.providers():
        if data.draw(st.booleans()):
            cpu, memory, disk, gpus = index.free_of(did)
            held = (cpu / 2, float(int(memory // 2)), float(int(disk // 2)), float(int(gpus)))
            assert index.reserve(f"hold-{did}", did, held)


@FAST
@given(fleets(), job_specs(), st.data())
def test_vector_masks_agree_with_per_offer_checks(
    fleet: Fleet, spec: JobSpec, data: st.DataObject
) -> None:
    index = index_of(fleet)
    reserve_some(index, data)
    need = Requirement.of(spec)
    masks = constraint_masks(index, need)
    assert list(masks) == [name for name in CHECK_ORDER if name in masks]
    for did in index.providers():
        row = index.row_of(did)
        assert row is not None
        failing = {name for name, passes in masks.items() if not passes[row]}
        assert failing == set(failures(index, need, did))


@FAST
@given(fleets(), job_specs())
def test_match_job_returns_exactly_the_fitting_nodes_best_first(
    fleet: Fleet, spec: JobSpec
) -> None:
    index = index_of(fleet)
    need = Requirement.of(spec)
    candidates = match_job(index, spec, limit=len(fleet))
    fitting = {did for did in index.providers() if not failures(index, need, did)}
    assert {c.provider for c in candidates} == fitting
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True)
    for candidate in candidates:
        assert 0.0 <= candidate.score <= 1.0
        parts = candidate.breakdown
        total = sum(parts.qualities[q] * parts.weights[q] for q in parts.qualities)
        assert abs(total - candidate.score) < 1e-9
    best = match_job(index, spec, limit=1)
    assert [c.provider for c in best] == [c.provider for c in candidates[:1]]


def largest_first(item: tuple[str, JobSpec]) -> tuple[float, float, float, float, str]:
    job_id, spec = item
    need = spec.resources
    return (-need.gpu_count, -need.cpu, -need.memory_mb, -need.disk_mb, job_id)


def reference_batch(
    index: NodeIndex, batch: list[tuple[str, JobSpec]]
) -> dict[str, tuple[str, ...]]:
    """The same greedy, one job at a time through ``match_job`` with the capacity left."""
    free = index.free[:, : index.size].copy()
    placed = {}
    for job_id, spec in sorted(batch, key=largest_first):
        chosen = match_job(index, spec, limit=spec.replicas, free=free)
        if len(chosen) < spec.replicas:
            continue
        for candidate in chosen:
            row = index.row_of(candidate.provider)
            free[:, row] -= Requirement.of(spec).amounts
        placed[job_id] = tuple(c.provider for c in chosen)
    return placed


@FAST
@given(fleets(), jobs(), st.data())
def test_batch_placements_meet_every_constraint_and_no_node_is_overfull(
    fleet: Fleet, batch: list[tuple[str, JobSpec]], data: st.DataObject
) -> None:
    index = index_of(fleet)
    reserve_some(index, data)
    result = assign_batch(index, batch, explain_unplaced=True)
    specs = dict(batch)
    used = {did: np.zeros(4) for did in index.providers()}
    for job_id, placement in result.placements.items():
        need = Requirement.of(specs[job_id])
        assert len(set(placement.providers)) == len(placement.providers) == need.replicas
        for did in placement.providers:
            assert failures(index, need, did) == {}
            used[did] += need.amounts
    for did, total in used.items():
        assert np.all(total <= np.array(index.free_of(did)) + TOLERANCE)
    assert set(result.placements) | set(result.unplaced) == set(specs)
    for job_id in result.unplaced:
        assert not result.explanations[job_id].placeable
    assert {k: p.providers for k, p in result.placements.items()} == reference_batch(index, batch)


@FAST
@given(fleets(), jobs(), st.randoms(use_true_random=False))
def test_batch_is_deterministic_whatever_the_order(
    fleet: Fleet, batch: list[tuple[str, JobSpec]], shuffler: random.Random
) -> None:
    first = assign_batch(index_of(fleet), batch)
    shuffled_fleet, shuffled_batch = list(fleet), list(batch)
    shuffler.shuffle(shuffled_fleet)
    shuffler.shuffle(shuffled_batch)
    second = assign_batch(index_of(shuffled_fleet), shuffled_batch)
    assert first == second


@FAST
@given(fleets(), job_specs(), st.data())
def test_explanation_counts_match_the_candidate_set(
    fleet: Fleet, spec: JobSpec, data: st.DataObject
) -> None:
    index = index_of(fleet)
    reserve_some(index, data)
    need = Requirement.of(spec)
    explanation = explain(index, spec, nearest=3)
    failing = {did: failures(index, need, did) for did in index.providers()}
    assert explanation.nodes == len(fleet)
    passed: set[str] = set(failing)
    previous = len(fleet)
    for effect in explanation.effects:
        assert effect.alone == sum(effect.name in found for found in failing.values())
        passed = {did for did in passed if effect.name not in failing[did]}
        assert effect.remaining == len(passed) <= previous
        previous = effect.remaining
    fitting = [did for did, found in failing.items() if not found]
    assert explanation.feasible == len(fitting)
    assert explanation.placeable == (len(fitting) >= need.replicas)
    assert explanation.placeable == (
        len(match_job(index, spec, limit=need.replicas)) >= need.replicas
    )
    counts = [len(miss.failed) for miss in explanation.nearest]
    assert all(count >= 1 for count in counts) and counts == sorted(counts)
    for miss in explanation.nearest:
        assert dict(miss.failed) == failing[miss.provider]
    if explanation.nearest:
        shown = {miss.provider for miss in explanation.nearest}
        closest_left = min(
            (len(found) for did, found in failing.items() if found and did not in shown),
            default=len(CHECK_ORDER),
        )
        assert closest_left >= counts[-1]
    encoded = explanation.to_dict()
    assert encoded["placeable"] == explanation.placeable
    assert explanation.text().startswith(f"job {spec.name!r}")
