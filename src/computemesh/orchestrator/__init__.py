"""The consumer side: bids, contracts, supervision of allocations, verified results."""

from computemesh.orchestrator.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.outcome import Outcome, judge_outcome

__all__ = ["Orchestrator", "OrchestratorSettings", "Outcome", "judge_outcome"]
