"""The migration decision (``orchestrator.migration.choose_move``) and its spec policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from computemesh.models.job import JobSpec, MigrationPolicy
from computemesh.models.validation import job_spec_schema
from computemesh.orchestrator.migration import (
    Move,
    choose_move,
    last_placed_at,
    relative_gain,
)
from computemesh.store import JobRecord

PROVIDERS = [f"did:key:z{name}" for name in "ABCDEFGH"]

scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
candidate_lists = st.lists(st.tuples(st.sampled_from(PROVIDERS), scores), max_size=8)
policies = st.builds(
    MigrationPolicy,
    enabled=st.booleans(),
    min_gain=st.floats(min_value=0.001, max_value=5.0),
    min_interval_s=st.floats(min_value=0.0, max_value=600.0),
)


def decide(
    policy: MigrationPolicy | None,
    current: float,
    candidates: list[tuple[str, float]],
    on_job: set[str],
    since: float = 1e6,
) -> Move | None:
    return choose_move(
        policy, current=current, candidates=candidates, on_job=on_job, moved_at=0.0, now=since
    )


@given(
    policies,
    scores,
    candidate_lists,
    st.sets(st.sampled_from(PROVIDERS)),
    st.floats(0, 1200),
)
def test_a_move_is_enabled_timely_clearly_better_and_never_to_the_jobs_own(
    policy: MigrationPolicy,
    current: float,
    candidates: list[tuple[str, float]],
    on_job: set[str],
    since: float,
) -> None:
    move = decide(policy, current, candidates, on_job, since)
    if move is None:
        return
    assert policy.enabled
    assert since >= policy.min_interval_s
    assert move.provider not in on_job
    assert move.gain >= policy.min_gain
    assert move.gain == relative_gain(current, move.score)
    eligible = [score for provider, score in candidates if provider not in on_job]
    assert move.score == max(eligible)


@given(scores, candidate_lists, st.sets(st.sampled_from(PROVIDERS)))
def test_never_moves_without_an_enabled_policy(
    current: float, candidates: list[tuple[str, float]], on_job: set[str]
) -> None:
    assert decide(None, current, candidates, on_job) is None
    assert decide(MigrationPolicy(), current, candidates, on_job) is None
    disabled = MigrationPolicy(enabled=False, min_gain=0.001, min_interval_s=0)
    assert decide(disabled, current, candidates, on_job) is None


@given(policies, scores, candidate_lists)
def test_never_moves_below_the_minimum_gain(
    policy: MigrationPolicy, current: float, candidates: list[tuple[str, float]]
) -> None:
    enabled = policy.model_copy(update={"enabled": True})
    best = max((score for _, score in candidates), default=None)
    move = decide(enabled, current, candidates, set())
    if best is None or relative_gain(current, best) < enabled.min_gain:
        assert move is None
    else:
        assert move is not None and move.score == best


def test_a_clearly_better_candidate_wins_and_equals_keep_their_order() -> None:
    policy = MigrationPolicy(enabled=True, min_gain=0.2, min_interval_s=30)
    a, b, c = PROVIDERS[:3]
    move = decide(policy, 0.4, [(a, 0.9), (b, 0.6), (c, 0.6)], {a})
    assert move == Move(provider=b, score=0.6, gain=pytest.approx(0.5))
    assert decide(policy, 0.5, [(b, 0.59)], set()) is None  # 18 % better: stays
    quarter = policy.model_copy(update={"min_gain": 0.25})
    assert decide(quarter, 0.5, [(b, 0.625)], set()) is not None  # exactly 25 %: moves
    assert decide(policy, 0.4, [(a, 0.9)], {a}) is None  # only the job's own provider
    assert decide(policy, 0.4, [(b, 0.9)], set(), since=29.9) is None  # moved too recently
    assert decide(policy, 0.0, [(b, 0.1)], set()) is not None  # from a zero score


def test_the_policy_is_validated_and_off_by_default() -> None:
    spec = JobSpec.model_validate({"name": "j", "command": ["true"]})
    assert spec.migration is None
    assert MigrationPolicy().enabled is False
    for bad in ({"min_gain": 0}, {"min_gain": -1}, {"min_interval_s": -5}, {"when": "always"}):
        with pytest.raises(ValidationError):
            JobSpec.model_validate({"name": "j", "command": ["true"], "migration": bad})
    schema = job_spec_schema()
    assert "migration" in schema["properties"]
    assert {"enabled", "min_gain", "min_interval_s"} <= set(
        schema["$defs"]["MigrationPolicy"]["properties"]
    )


def test_the_last_move_is_the_latest_placement() -> None:
    history = [
        {"at": 10.0, "event": "submitted", "detail": {}},
        {"at": 12.0, "event": "placed", "detail": {}},
        {"at": 40.0, "event": "placed", "detail": {}},
        {"at": 50.0, "event": "migrated", "detail": {}},
    ]
    record = JobRecord(
        job_id="j",
        name="j",
        status="running",
        reason="",
        spec={},
        contracts=[],
        results=[],
        verified=None,
        created_at=10.0,
        updated_at=50.0,
        history=history,
    )
    assert last_placed_at(record) == 40.0
    assert last_placed_at(JobRecord(**{**record.__dict__, "history": []})) == 10.0
