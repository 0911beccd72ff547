"""`cmesh match --dry-run`: rank the nodes that answered for a job, without deploying it."""

from __future__ import annotations

import time
from typing import Any

from computemesh.matching import NodeIndex, explain, match_job
from computemesh.models.job import JobSpec
from computemesh.models.market import Advertisement


def index_of(adverts: dict[str, Advertisement], *, seen_at: float | None = None) -> NodeIndex:
    """A node index of these advertisements; implausible ones are dropped (and logged)."""
    index = NodeIndex(capacity=max(16, len(adverts)))
    now = time.time() if seen_at is None else seen_at
    for did, advert in sorted(adverts.items()):
        index.upsert(did, advert, seen_at=now)
    return index


def dry_run(spec: JobSpec, adverts: dict[str, Advertisement], *, limit: int) -> dict[str, Any]:
    """Ranked candidates with score breakdowns, and the per-constraint explanation."""
    index = index_of(adverts)
    candidates = match_job(index, spec, limit=limit)
    explanation = explain(index, spec)
    return {
        "job": spec.name,
        "nodes": len(adverts),
        "candidates": [candidate.to_dict() for candidate in candidates],
        "explanation": explanation.to_dict(),
        "text": explanation.text(),
    }
