"""Pure matching functions: which offers fit a job, and in what order."""

from computemesh.matching.constraints import max_charge, rank_bids, unmet_requirements

__all__ = ["max_charge", "rank_bids", "unmet_requirements"]
