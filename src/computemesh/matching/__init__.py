"""Pure matching: which nodes fit a job, in what order, and why none does.

Per offer (nodes deciding whether to bid, consumers screening bids):
    unmet_requirements, max_charge, rank_bids

Over an index of advertisements (the consumer's orchestrator):
    NodeIndex              columnar advertisements: upsert, heartbeat, remove, drop_stale,
                           reserve / release, record_outcome
    match_job              one job: ranked candidates with score breakdowns
    assign_batch           many jobs with capacity accounting (deterministic greedy)
    place_ensemble         allocations under latency, same-region and spread rules (CP-SAT)
    explain                why a job cannot be placed: per-constraint counts, near misses
"""

from computemesh.matching.batch import BatchResult, Placement, assign_batch
from computemesh.matching.constraints import (
    failed_constraints,
    unmet_requirements,
)
from computemesh.matching.cpsat import SolverLimits
from computemesh.matching.engine import Candidate, match_job
from computemesh.matching.ensemble import EnsemblePlacement, place_ensemble
from computemesh.matching.explain import ConstraintEffect, Explanation, NearMiss, explain
from computemesh.matching.index import NodeIndex
from computemesh.matching.plausibility import implausible_values
from computemesh.matching.price import max_charge, rank_bids
from computemesh.matching.requirement import CHECK_ORDER, Requirement
from computemesh.matching.scoring import ScoreBreakdown

__all__ = [
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
]
