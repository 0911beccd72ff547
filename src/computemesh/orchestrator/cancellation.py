"""Cancelling: stop a job's allocations on their nodes, return their capacity, refund.

Cancelling a whole job ends it ``failed`` ("cancelled by the consumer") before its
providers are asked to stop, so the ``killed`` results they sign change nothing. One
allocation alone can be stopped too (a relocation, a migration, a failed ensemble does):
what becomes of its job is then the caller's decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from computemesh.actor import behaviours
from computemesh.identity.did import abbreviate_did
from computemesh.models.errors import MeshError
from computemesh.orchestrator.outcome import Outcome
from computemesh.settlement import SettlementError

if TYPE_CHECKING:
    from computemesh.orchestrator.orchestrator import Orchestrator

log = logging.getLogger(__name__)

CANCELLED_BY_CONSUMER = "cancelled by the consumer"


@dataclass(frozen=True)
class Cancellation:
    """What cancelling one allocation did."""

    contract_id: str
    provider: str
    state: str
    """What its node answered: the result's status once it ended (``killed`` when the
    cancel stopped it), else the allocation's; or why the node could not be asked (an
    error code: ``unknown_allocation``, ``timeout``, ``no_responders``)."""
    refunded: bool
    """Whether its escrow stands refunded (a refund made before is replayed, moving
    nothing); False without payments, or when a final release closed it."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "contract_id": self.contract_id,
            "provider": self.provider,
            "state": self.state,
            "refunded": self.refunded,
        }


class Cancelling:
    """Cancels jobs and allocations for the orchestrator."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self.running: set[asyncio.Task[Cancellation]] = set()
        """Cancels under way in the background (``Orchestrator.stop`` cancels them)."""

    async def cancel(self, job_id: str, contract_id: str | None = None) -> list[Cancellation]:
        """Cancel the job, or only its allocation ``contract_id``: stop, refund, report.

        Cancelling the whole job ends it ``failed`` ("cancelled by the consumer") first, so
        the ``killed`` results its providers sign change nothing, takes it out of the
        placement queue, then asks each provider to stop (``cancel_allocation``). One
        allocation is only stopped: what becomes of the job is the caller's decision.
        Idempotent: a final job is left as it is, its providers answer their state.
        Raises ``UnknownJob``, or MeshError (``unknown_contract``) for a contract the job
        does not hold.
        """
        orchestrator = self.orchestrator
        record = orchestrator.jobs.find(job_id)
        contracts = [
            contract["terms"]
            for contract in record.contracts
            if contract_id in (None, contract["terms"]["contract_id"])
        ]
        if contract_id is not None and not contracts:
            raise MeshError(
                f"job {record.job_id} holds no contract {contract_id}", code="unknown_contract"
            )
        if contract_id is None and not record.is_final:
            orchestrator.jobs.set_status(record.job_id, "failed", CANCELLED_BY_CONSUMER)
            orchestrator.placement.settle(record.job_id)
            ended = Outcome(results=[], final=True, status="failed", verified=False, reason="")
            orchestrator.settle(record.job_id, ended)
        done = await asyncio.gather(*(orchestrator.cancel_allocation(terms) for terms in contracts))
        for cancellation in done:
            orchestrator.jobs.record_event(record.job_id, "cancelled", cancellation.to_dict())
        return list(done)

    async def cancel_allocation(
        self, terms: Mapping[str, Any], *, refund: bool = True
    ) -> Cancellation:
        """Ask the provider of the contract ``terms`` to stop its allocation, return the
        capacity promised to it and, with ``refund``, refund its escrow (a relocation keeps
        the escrow of a contract whose checkpoint the job resumes from until the job is
        final: ``Orchestrator.settle``). The contract's job is not touched."""
        contract_id, provider = str(terms["contract_id"]), str(terms["provider"])
        try:
            reply = await self.orchestrator.actor.request(
                provider,
                behaviours.CANCEL,
                {"contract_id": contract_id},
                timeout=self.orchestrator.settings.request_timeout_s,
            )
            state = _answered_state(reply)
        except MeshError as exc:
            state = exc.code
        self.orchestrator.view.release(contract_id)
        log.info("contract %s cancelled on %s: %s", contract_id, abbreviate_did(provider), state)
        refunded = self._refund(contract_id) if refund else False
        return Cancellation(contract_id, provider, state, refunded)

    def cancel_later(self, terms: Mapping[str, Any], *, refund: bool = True) -> None:
        """``cancel_allocation`` in the background (best effort; ``Orchestrator.stop`` ends
        it)."""
        task = asyncio.create_task(self.orchestrator.cancel_allocation(terms, refund=refund))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    def _refund(self, contract_id: str) -> bool:
        payments = self.orchestrator.payments
        if payments is None:
            return False
        try:
            return payments.refund(contract_id) is not None
        except SettlementError as exc:
            log.error("contract %s: refund failed: %s", contract_id, exc.message)
            return False


def _answered_state(reply: Mapping[str, Any]) -> str:
    """A cancel reply's state: its result's status when it has one, else the allocation's."""
    result = reply.get("result")
    body = result.get("body") if isinstance(result, dict) else None
    state = body.get("status") if isinstance(body, dict) else reply.get("status")
    return state[:64] if isinstance(state, str) else "unknown"
