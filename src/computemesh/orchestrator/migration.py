"""Better-match migration: a running job moves when a clearly better provider appears.

``choose_move`` (pure) decides for one allocation from matching scores. ``Migration`` runs
it over the running jobs whose spec enables it (``JobSpec.migration``, off by default)
whenever a node joins the index and every ``OrchestratorSettings.migration_check_s``:

- the allocation's provider is scored as ``match_job`` scores candidates (the job's
  preferences over the index), and so is every indexed node that meets the job's hard
  constraints now and is not on the job (nor excluded after a fraud);
- the best of those moves the job when it scores at least ``min_gain`` better, relative
  to the current provider, and the job was last placed ``min_interval_s`` ago or more.

A move, under the job's recovery lock (so it never races a relocation): the chosen node
alone is asked for a bid (the job is left alone if it will not bid or commit); once it
countersigned, the old contract is superseded, its allocation cancelled on its node
(``Orchestrator.cancel_allocation``: the run is stopped) and a ``migrated`` event recorded
in the job's history. Its escrow follows the rule relocation follows: refunded at once,
unless the job holds a checkpoint of that contract; then it stays locked until the job is
final and pays that checkpoint's signed usage if a verified result built on it
(``orchestrator.progress``), so the old provider is paid for verified progress only. The
new contract names the latest verified checkpoint in ``resume_from`` as every placement
does, so a job that checkpoints resumes from it and any other restarts. If the old
allocation reported its result while the new one was being contracted, the new one is
cancelled instead and the result kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from computemesh.identity.did import abbreviate_did
from computemesh.matching import Requirement, match_job
from computemesh.matching.engine import score_rows
from computemesh.models.errors import MeshError
from computemesh.models.job import JobSpec, MigrationPolicy
from computemesh.models.validation import parse_job_spec
from computemesh.store import JobRecord

if TYPE_CHECKING:
    from computemesh.orchestrator.orchestrator import Orchestrator

log = logging.getLogger(__name__)

MIN_SCORE = 1e-9
"""The floor under a current score when a gain is taken relative to it."""


@dataclass(frozen=True)
class Move:
    """A decided move: to ``provider``, scoring ``score``, ``gain`` better than now."""

    provider: str
    score: float
    gain: float


def relative_gain(current: float, candidate: float) -> float:
    """How much better ``candidate`` scores than ``current``, relative to ``current``."""
    return (candidate - current) / max(current, MIN_SCORE)


def choose_move(
    policy: MigrationPolicy | None,
    *,
    current: float,
    candidates: Sequence[tuple[str, float]],
    on_job: Collection[str],
    moved_at: float,
    now: float,
) -> Move | None:
    """Where one allocation should move, or None when it stays.

    ``current`` is its provider's score; ``candidates`` are ``(provider, score)``, best
    first; ``on_job`` are the providers the job holds (never a destination); ``moved_at``
    is when the job was last placed, ``now`` the time (both in seconds). It moves only when
    the policy is enabled, ``min_interval_s`` passed since ``moved_at``, and the best
    candidate not on the job (the first of equals) gains at least ``min_gain``.
    """
    if policy is None or not policy.enabled or now - moved_at < policy.min_interval_s:
        return None
    eligible = [(provider, score) for provider, score in candidates if provider not in on_job]
    if not eligible:
        return None
    provider, score = max(eligible, key=lambda candidate: candidate[1])
    gain = relative_gain(current, score)
    if not gain >= policy.min_gain:
        return None
    return Move(provider=provider, score=score, gain=gain)


def last_placed_at(record: JobRecord) -> float:
    """When the job was last placed (its latest ``placed`` event), in unix seconds."""
    placed = [entry["at"] for entry in record.history if entry["event"] == "placed"]
    return max(placed, default=record.created_at)


class Migration:
    """Moves one orchestrator's migratable running jobs to clearly better providers."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator

    async def check(self) -> list[str]:
        """One pass over the running jobs; the ids of those moved."""
        moved = []
        for record in self.orchestrator.jobs.in_states(("running",)):
            spec = parse_job_spec(record.spec)
            if spec.migration is None or not spec.migration.enabled:
                continue
            planned = self.plan(record, spec)
            if planned is not None and await self.move(record.job_id, *planned):
                moved.append(record.job_id)
        return moved

    def plan(self, record: JobRecord, spec: JobSpec) -> tuple[dict[str, Any], Move] | None:
        """The first of the job's unreported allocations that should move, and where."""
        index = self.orchestrator.view.index
        on_job = {contract["terms"]["provider"] for contract in record.contracts}
        excluded = self.orchestrator.verification.excluded()
        ranked = match_job(index, spec, limit=len(on_job) + len(excluded) + 1)
        candidates = [(c.provider, c.score) for c in ranked if c.provider not in excluded]
        reported = {document["body"]["contract_id"] for document in record.results}
        weights = Requirement.of(spec).weights
        for contract in record.contracts:
            terms = contract["terms"]
            row = index.row_of(terms["provider"])
            if terms["contract_id"] in reported or row is None:
                continue  # done, or its node left the index: recovery's business
            current = float(score_rows(index, weights, np.array([row], dtype=np.intp))[0])
            move = choose_move(
                spec.migration,
                current=current,
                candidates=candidates,
                on_job=on_job,
                moved_at=last_placed_at(record),
                now=time.time(),
            )
            if move is not None:
                return contract, move
        return None

    async def move(self, job_id: str, contract: dict[str, Any], move: Move) -> bool:
        """Carry out one move (see the module docstring); whether the job moved."""
        orchestrator, jobs = self.orchestrator, self.orchestrator.jobs
        old = contract["terms"]
        async with orchestrator.recovery.job_lock(job_id):
            if _state_of(jobs.get(job_id), old["contract_id"]) != "running":
                return False
            bid = await orchestrator.quote(job_id, move.provider)
            if bid is None:
                log.info("job %s: %s did not bid; staying", job_id, abbreviate_did(move.provider))
                return False
            try:
                new = await orchestrator.contract_bid(job_id, move.provider, bid)
            except MeshError as exc:
                log.info("job %s: no move to %s: %s", job_id, move.provider, exc.message)
                return False
            record = jobs.get(job_id)
            if _state_of(record, old["contract_id"]) != "running":
                await self._keep_old(record, new)
                return False
            jobs.supersede_contract(job_id, old["contract_id"])
            jobs.set_status(job_id, "running")
            held = orchestrator.checkpoints.holds_checkpoint_of(job_id, old["contract_id"])
            cancelled = await orchestrator.cancel_allocation(old, refund=not held)
        jobs.record_event(
            job_id,
            "migrated",
            {
                "from": old["provider"],
                "to": move.provider,
                "contract_id": old["contract_id"],
                "gain": round(move.gain, 3),
                "cancelled": cancelled.state,
                "refunded": cancelled.refunded,
                "escrow_held": held and orchestrator.payments is not None,
                "resume_from": new["terms"]["resume_from"],
            },
        )
        log.info(
            "job %s moved from %s to %s (score %+.0f %%)",
            job_id,
            abbreviate_did(old["provider"]),
            abbreviate_did(move.provider),
            move.gain * 100,
        )
        return True

    async def _keep_old(self, record: JobRecord, new: dict[str, Any]) -> None:
        """The old allocation reported meanwhile: drop the new one and judge the job again."""
        jobs = self.orchestrator.jobs
        if jobs.supersede_contract(record.job_id, new["terms"]["contract_id"]):
            jobs.set_status(record.job_id, "running")
            if record.results:
                self.orchestrator.accept_result(record.job_id, record.results[0])
        await self.orchestrator.cancel_allocation(new["terms"])


def _state_of(record: JobRecord, contract_id: str) -> str:
    """``running`` while the job is unfinished and holds the contract without its result;
    ``reported``, ``gone`` or ``final`` otherwise."""
    if record.is_final:
        return "final"
    if contract_id in {document["body"]["contract_id"] for document in record.results}:
        return "reported"
    held = {contract["terms"]["contract_id"] for contract in record.contracts}
    return "running" if contract_id in held else "gone"
