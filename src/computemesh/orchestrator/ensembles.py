"""Deploying an ensemble on the live mesh: place all allocations together, or none.

``place_ensemble`` chooses a node per allocation over the orchestrator's index (latency
bounds, same-region and spread rules). Every allocation is stored as a job of its own,
then each chosen node is asked for a bid (it re-checks and signs, as for any job); only
when every node bid are the contracts signed. If a node refuses, or a contract fails,
every allocation's job ends ``failed`` with the reason and the allocations already
contracted are cancelled on their nodes (``Orchestrator.cancel_allocation``: the run
stopped, promised capacity returned, escrow refunded). Then every result is awaited.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from computemesh.identity.did import abbreviate_did
from computemesh.matching import place_ensemble
from computemesh.models.ensemble import EnsembleSpec
from computemesh.models.errors import MeshError, NoProviderError
from computemesh.models.market import Bid
from computemesh.models.validation import parse_ensemble_spec
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.store import JobRecord

if TYPE_CHECKING:
    from computemesh.orchestrator.orchestrator import Orchestrator

log = logging.getLogger(__name__)


@dataclass
class EnsembleOutcome:
    """Where each allocation ended: its job and provider, and the ensemble's status."""

    ensemble: str
    status: str
    jobs: dict[str, str] = field(default_factory=dict)
    """Allocation name -> job id."""
    providers: dict[str, str] = field(default_factory=dict)
    records: dict[str, JobRecord] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ensemble": self.ensemble,
            "status": self.status,
            "reason": self.reason,
            "allocations": {
                name: {
                    "job_id": job_id,
                    "provider": self.providers.get(name),
                    "status": self.records[name].status if name in self.records else None,
                    "verified": self.records[name].verified if name in self.records else None,
                }
                for name, job_id in self.jobs.items()
            },
        }


def placement_error(ensemble: EnsembleSpec, problems: list[str], texts: list[str]) -> MeshError:
    return NoProviderError(
        f"ensemble {ensemble.name!r} cannot be placed",
        reasons=[*problems, *texts],
        hint="relax the ensemble's rules or the allocations' constraints, or add nodes",
    )


async def deploy_ensemble(
    orchestrator: Orchestrator, ensemble: EnsembleSpec, *, timeout: float
) -> EnsembleOutcome:
    """See the module docstring; raises ``NoProviderError`` when no placement exists."""
    placement = place_ensemble(orchestrator.view.index, ensemble)
    if not placement.placed:
        texts = [explanation.text() for explanation in placement.explanations.values()]
        raise placement_error(ensemble, list(placement.problems), texts)
    outcome = EnsembleOutcome(ensemble=ensemble.name, status="bidding")
    for spec in ensemble.allocations:
        outcome.jobs[spec.name] = orchestrator.submit(spec)
        outcome.providers[spec.name] = placement.assignments[spec.name]
    log.info(
        "ensemble %s placed (%s): %s",
        ensemble.name,
        placement.status,
        ", ".join(f"{n} on {abbreviate_did(p)}" for n, p in outcome.providers.items()),
    )
    try:
        bids = await _collect_all_bids(orchestrator, outcome)
        await _contract_all(orchestrator, outcome, bids)
    except MeshError as exc:
        await _release(orchestrator, outcome, exc.message)
        outcome.records = {name: orchestrator.jobs.get(job) for name, job in outcome.jobs.items()}
        return outcome
    finals = await asyncio.gather(
        *(orchestrator.await_outcome(job, timeout=timeout) for job in outcome.jobs.values())
    )
    outcome.records = dict(zip(outcome.jobs, finals, strict=True))
    completed = all(record.status == "completed" for record in finals)
    outcome.status = "completed" if completed else "failed"
    return outcome


async def _collect_all_bids(orchestrator: Orchestrator, outcome: EnsembleOutcome) -> dict[str, Bid]:
    names = list(outcome.jobs)
    answers = await asyncio.gather(
        *(orchestrator.bid_from(outcome.jobs[n], outcome.providers[n]) for n in names),
        return_exceptions=True,
    )
    bids: dict[str, Bid] = {}
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, Bid):
            bids[name] = answer
            continue
        if not isinstance(answer, MeshError):
            raise answer
        reasons = answer.reasons if isinstance(answer, NoProviderError) else [answer.message]
        raise MeshError(
            f"allocation {name}: " + "; ".join(reasons),
            code="ensemble_unplaced",
        )
    return bids


async def _contract_all(
    orchestrator: Orchestrator, outcome: EnsembleOutcome, bids: dict[str, Bid]
) -> None:
    names = list(outcome.jobs)
    answers = await asyncio.gather(
        *(orchestrator.contract_bid(outcome.jobs[n], outcome.providers[n], bids[n]) for n in names),
        return_exceptions=True,
    )
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, BaseException):
            message = answer.message if isinstance(answer, MeshError) else str(answer)
            raise MeshError(
                f"allocation {name}: contract failed: {message}", code="ensemble_unplaced"
            )


async def _release(orchestrator: Orchestrator, outcome: EnsembleOutcome, reason: str) -> None:
    """End every allocation of a failed ensemble and cancel those already countersigned.

    Each job ends ``failed`` before its allocation is cancelled, so the ``killed`` result
    the node signs changes nothing.
    """
    outcome.status = "failed"
    outcome.reason = reason
    contracted: list[dict[str, Any]] = []
    for name, job_id in outcome.jobs.items():
        record = orchestrator.jobs.get(job_id)
        if not record.is_final:
            orchestrator.jobs.set_status(job_id, "failed", f"ensemble not placed: {reason}")
        contracted.extend(contract["terms"] for contract in record.contracts)
        log.warning("ensemble %s: allocation %s released: %s", outcome.ensemble, name, reason)
    await asyncio.gather(*(orchestrator.cancel_allocation(terms) for terms in contracted))


def is_ensemble_document(data: object) -> bool:
    """A spec file holds an ensemble when it lists ``allocations``."""
    return isinstance(data, dict) and "allocations" in data


def load_ensemble_spec(data: object, base_dir: Path) -> EnsembleSpec:
    """Validate an ensemble document and resolve every allocation's inputs."""
    ensemble = parse_ensemble_spec(data)
    allocations = [resolve_inputs(spec, base_dir) for spec in ensemble.allocations]
    return ensemble.model_copy(update={"allocations": allocations})
