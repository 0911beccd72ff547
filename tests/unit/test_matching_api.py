"""The public matching API is pinned: the orchestrator and nodes build on these names."""

from __future__ import annotations

import inspect
import json

import computemesh.matching as matching
from computemesh.matching import NodeIndex, explain, match_job
from computemesh.models.job import JobSpec
from tests.unit.test_matching_index import A, advert

PUBLIC = {
    "CHECK_ORDER",
    "BatchResult",
    "Candidate",
    "ConstraintEffect",
    "EnsemblePlacement",
    "Explanation",
    "NearMiss",
    "NodeIndex",
    "Placement",
    "Requirement",
    "ScoreBreakdown",
    "SolverLimits",
    "assign_batch",
    "explain",
    "failed_constraints",
    "implausible_values",
    "match_job",
    "max_charge",
    "place_ensemble",
    "rank_bids",
    "unmet_requirements",
}


def test_public_names_are_pinned() -> None:
    assert set(matching.__all__) == PUBLIC
    assert all(hasattr(matching, name) for name in PUBLIC)


def test_per_offer_functions_keep_their_signatures() -> None:
    assert list(inspect.signature(matching.unmet_requirements).parameters) == [
        "spec",
        "offer",
        "provider",
    ]
    assert list(inspect.signature(matching.max_charge).parameters) == ["spec", "rates"]
    assert list(inspect.signature(matching.rank_bids).parameters) == ["spec", "bids"]


def test_results_are_json_ready() -> None:
    index = NodeIndex()
    index.upsert(A, advert(), seen_at=0.0)
    spec = JobSpec.model_validate(
        {"name": "big", "command": ["x"], "resources": {"cpu": 2, "memory_mb": 99_999}}
    )
    explanation = explain(index, spec)
    assert not explanation.placeable
    text = json.dumps(explanation.to_dict())
    assert '"name": "memory"' in text
    assert "memory: needs 99999 MB, node has 8192 MB" in explanation.text()
    fits = JobSpec.model_validate({"name": "small", "command": ["x"]})
    (candidate,) = match_job(index, fits)
    assert json.loads(json.dumps(candidate.to_dict()))["provider"] == A
