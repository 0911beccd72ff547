"""Results: receive, verify and judge the providers' signed results; supervise the wait.

A result is pushed by its provider (``on_result``) or fetched from it when the push was
missed (``fetch_results``); either way it is stored only if it verifies against its
contract and the spec, and the job is judged once every replica reported (``outcome``),
its verdict applied by the verification policy (``verify_flow``: accept, ask for more
replicas, or fail). ``await_outcome`` waits for the job to be final, fetching when results
are slow; a provider that cannot be reached or lost the allocation is handed to
``recovery``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from computemesh.actor import Inbound, behaviours
from computemesh.identity.did import abbreviate_did
from computemesh.models.errors import MeshError, VerificationError
from computemesh.models.market import ContractTerms
from computemesh.models.validation import parse_model
from computemesh.orchestrator.outcome import Outcome, judge_outcome
from computemesh.orchestrator.verify_flow import place_more_replicas
from computemesh.store import JobRecord

if TYPE_CHECKING:
    from computemesh.orchestrator.orchestrator import Orchestrator

log = logging.getLogger(__name__)


class ResultDesk:
    """Takes in results for the orchestrator and waits for its jobs' outcomes."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self._arrived: dict[str, asyncio.Event] = {}
        """Contract id -> set once its result was accepted."""
        self.more_replicas: dict[str, asyncio.Task[None]] = {}
        """Job id -> the placement of replicas a verdict asked for, while it runs."""

    def expect(self, contract_id: str) -> None:
        """A contract is being signed: its result may be waited for from now on."""
        self._arrived[contract_id] = asyncio.Event()

    async def on_result(self, inbound: Inbound) -> None:
        """A pushed result: stored only if it verifies against its contract."""
        document = inbound.payload.get("result")
        body = document.get("body") if isinstance(document, dict) else None
        job_id = body.get("job_id") if isinstance(body, dict) else None
        if not isinstance(job_id, str):
            raise VerificationError("result without a job id")
        self.orchestrator.accept_result(job_id, document)

    def accept_result(self, job_id: str, document: object) -> Outcome | None:
        """Verify and store one signed result; judge the job once every replica reported.

        When the verdict wants more replicas, they are placed in the background (awaited by
        ``await_outcome`` when someone waits for the job, cancelled by
        ``Orchestrator.stop``).
        """
        orchestrator = self.orchestrator
        record = orchestrator.jobs.find(job_id)
        outcome = judge_outcome(record, [*record.results, document])
        if outcome.rejected:
            log.warning("job %s: result rejected: %s", job_id, outcome.rejected)
            raise VerificationError(outcome.rejected)
        outcome = orchestrator.verification.apply(record, outcome)
        if record.is_final:  # ended already (judged, cancelled): the stored verdict stands
            outcome = replace(
                outcome,
                results=record.results,
                status=record.status,
                verified=bool(record.verified),
                reason=record.reason,
            )
        self._record(record, outcome)
        if outcome.more:
            self._place_more_replicas(record.job_id, outcome.more)
        for contract_id in outcome.contract_ids:
            orchestrator.view.release(contract_id)
            event = self._arrived.get(contract_id)
            if event is not None:
                event.set()
        return outcome

    def _record(self, record: JobRecord, outcome: Outcome) -> None:
        """Store the outcome: final (escrows settled), else the job runs on."""
        final = outcome.final
        self.orchestrator.jobs.record_outcome(
            record.job_id,
            results=outcome.results,
            status=outcome.status if final else "running",
            verified=outcome.verified if final else False,
            reason=outcome.reason,
        )
        if final:
            self.orchestrator.settle(record.job_id, outcome, held=record.contracts)

    def _place_more_replicas(self, job_id: str, count: int) -> None:
        """Start placing ``count`` more replicas of the job, unless that is under way."""
        running = self.more_replicas.get(job_id)
        if running is not None and not running.done():
            return
        placement = asyncio.create_task(place_more_replicas(self.orchestrator, job_id, count))
        self.more_replicas[job_id] = placement
        placement.add_done_callback(partial(self._placed_more, job_id))

    def _placed_more(self, job_id: str, placement: asyncio.Task[None]) -> None:
        if self.more_replicas.get(job_id) is placement:
            del self.more_replicas[job_id]
        failure = None if placement.cancelled() else placement.exception()
        if failure is not None:
            log.error("job %s: placing more replicas failed", job_id, exc_info=failure)

    async def fetch_results(self, job_id: str) -> JobRecord:
        """Ask each contracted provider for a result not yet received."""
        orchestrator = self.orchestrator
        record = orchestrator.jobs.find(job_id)
        have = {doc["body"]["contract_id"] for doc in record.results if isinstance(doc, dict)}
        for contract in record.contracts:
            terms = parse_model(ContractTerms, contract["terms"], what="contract terms")
            if terms.contract_id in have:
                continue
            try:
                reply = await orchestrator.actor.request(
                    terms.provider,
                    behaviours.RESULT_FETCH,
                    {"contract_id": terms.contract_id},
                    timeout=orchestrator.settings.request_timeout_s,
                )
            except MeshError as exc:
                log.info("fetching %s from %s: %s", job_id, abbreviate_did(terms.provider), exc)
                await orchestrator.recovery.on_unreachable(record.job_id, terms, exc)
                continue
            if await orchestrator.recovery.on_fetched(record.job_id, terms, reply.get("result")):
                continue
            if reply.get("result") is not None:
                try:
                    orchestrator.accept_result(record.job_id, reply["result"])
                except VerificationError:
                    continue
        return orchestrator.jobs.get(record.job_id)

    async def await_outcome(self, job_id: str, *, timeout: float) -> JobRecord:
        """Wait until the job is final (results verified or failed), fetching when slow."""
        orchestrator = self.orchestrator
        deadline = time.monotonic() + timeout
        while True:
            record = orchestrator.jobs.get(job_id)
            if record.is_final:
                return record
            placement = self.more_replicas.get(job_id)
            if placement is not None and not placement.done():
                await asyncio.wait({placement})
                deadline = max(deadline, time.monotonic() + timeout)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return await orchestrator.fetch_results(job_id)
            fetch_interval_s = orchestrator.settings.fetch_interval_s
            await self._wait_any_result(record, min(remaining, fetch_interval_s))
            if not orchestrator.jobs.get(job_id).is_final:
                await orchestrator.fetch_results(job_id)

    async def _wait_any_result(self, record: JobRecord, timeout: float) -> None:
        events = [
            self._arrived.setdefault(contract["terms"]["contract_id"], asyncio.Event())
            for contract in record.contracts
        ]
        waiters = [asyncio.create_task(event.wait()) for event in events if not event.is_set()]
        if not waiters:
            if record.status == "queued":
                await self.orchestrator.placement.wait_settled(record.job_id, timeout)
            return
        _, pending = await asyncio.wait(
            waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
