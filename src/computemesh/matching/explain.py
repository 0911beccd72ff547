"""Why a job cannot be placed: which constraint removed how many nodes, and who came close.

For every hard constraint the job sets, two counts over the live nodes:

- ``alone``: the nodes that fail this constraint, whatever the others say;
- ``remaining``: the nodes left after applying the constraints in ``CHECK_ORDER`` one
  after another (the funnel), so it never grows from one constraint to the next.

The job is placeable when the funnel's last count reaches its replicas. The nearest misses
are the nodes failing the fewest constraints (best ranked first among equals), each with
the reasons ``unmet_requirements`` would give against the capacity considered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from computemesh.identity.did import abbreviate_did
from computemesh.matching.constraints import failed_constraints
from computemesh.matching.engine import as_requirement, score_rows
from computemesh.matching.filters import Capacity, constraint_masks
from computemesh.matching.index import NodeIndex
from computemesh.matching.requirement import Requirement
from computemesh.matching.scoring import rank_keys
from computemesh.models.job import JobSpec

NEAREST = 5


@dataclass(frozen=True)
class ConstraintEffect:
    name: str
    alone: int
    remaining: int


@dataclass(frozen=True)
class NearMiss:
    provider: str
    failed: tuple[tuple[str, str], ...]
    """``(constraint, reason)`` pairs, in ``CHECK_ORDER``."""


@dataclass(frozen=True)
class Explanation:
    """What stands between a job and the nodes indexed; see the module docstring."""

    job: str
    nodes: int
    needed: int
    effects: tuple[ConstraintEffect, ...]
    nearest: tuple[NearMiss, ...]

    @property
    def feasible(self) -> int:
        return self.effects[-1].remaining if self.effects else self.nodes

    @property
    def placeable(self) -> bool:
        return self.feasible >= self.needed

    def to_dict(self) -> dict[str, Any]:
        """The explanation as JSON-ready data."""
        return {
            "job": self.job,
            "placeable": self.placeable,
            "nodes": self.nodes,
            "needed": self.needed,
            "feasible": self.feasible,
            "constraints": [
                {"name": e.name, "alone": e.alone, "remaining": e.remaining} for e in self.effects
            ],
            "nearest": [
                {
                    "provider": miss.provider,
                    "failed": [{"constraint": c, "reason": r} for c, r in miss.failed],
                }
                for miss in self.nearest
            ],
        }

    def text(self) -> str:
        """A few lines for people: the verdict, the funnel, the nearest misses."""
        verdict = "can be placed" if self.placeable else "cannot be placed"
        lines = [
            f"job {self.job!r} {verdict}: {self.feasible} of {self.nodes} nodes fit"
            f" (needs {self.needed})"
        ]
        lines.extend(
            f"  {e.name:<13} removes {e.alone:>7} alone, {e.remaining:>7} left after it"
            for e in self.effects
        )
        for miss in self.nearest:
            reasons = "; ".join(reason for _, reason in miss.failed)
            lines.append(f"  near miss {abbreviate_did(miss.provider)}: {reasons}")
        return "\n".join(lines)


def explain(
    index: NodeIndex,
    job: JobSpec | Requirement,
    *,
    free: Capacity | None = None,
    nearest: int = NEAREST,
) -> Explanation:
    """Count what each constraint of ``job`` removes from ``index`` and name near misses.

    ``free`` replaces the index's free capacity, as in ``match_job``.
    """
    need = as_requirement(job)
    capacity = index.free[:, : index.size] if free is None else free
    live = index.alive[: index.size]
    masks = constraint_masks(index, need, capacity)
    effects = []
    remaining = live.copy()
    for name, passes in masks.items():
        remaining &= passes
        alone = int(np.count_nonzero(live & ~passes))
        effects.append(ConstraintEffect(name, alone, int(np.count_nonzero(remaining))))
    return Explanation(
        job=need.name,
        nodes=int(np.count_nonzero(live)),
        needed=need.replicas,
        effects=tuple(effects),
        nearest=_nearest(index, need, masks, capacity, nearest),
    )


def _nearest(
    index: NodeIndex,
    need: Requirement,
    masks: dict[str, np.ndarray[Any, np.dtype[np.bool_]]],
    capacity: Capacity,
    limit: int,
) -> tuple[NearMiss, ...]:
    live = index.alive[: index.size]
    failures = np.zeros(index.size, dtype=np.int64)
    for passes in masks.values():
        failures += ~passes
    rows = np.flatnonzero(live & (failures > 0))
    if rows.size == 0 or limit <= 0:
        return ()
    keys = rank_keys(score_rows(index, need.weights, rows), index.tiebreak[rows])
    order = np.lexsort((-keys, failures[rows]))[:limit]
    misses = []
    for row in rows[order]:
        did = index.did_at(int(row))
        cpu, memory, disk, gpu = (float(v) for v in capacity[:, row])
        failed = failed_constraints(need, index.advertisement(did), did, (cpu, memory, disk, gpu))
        misses.append(NearMiss(did, tuple(failed)))
    return tuple(misses)
