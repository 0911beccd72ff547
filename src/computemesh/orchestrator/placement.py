"""Placement: contract the providers a job needs, or keep it in the placement queue.

One placement round collects bids (``bids``), ranks those that fit and contracts the best
until the job has the providers it wants (``commit``). A permanent reason ends the job
``no_provider``; a transient one (capacity that may free up, a node that did not answer)
queues it (status ``queued``) in the durable placement queue, ordered by priority then
arrival. ``drain_queue`` retries the queued jobs whenever capacity appears and at least
every ``queue_retry_s``; whoever waits in ``place`` is woken when its job leaves the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from computemesh.identity.did import abbreviate_did
from computemesh.matching import rank_bids
from computemesh.models.errors import MeshError, NoProviderError
from computemesh.models.job import JobSpec
from computemesh.models.validation import parse_job_spec
from computemesh.store import JobRecord

if TYPE_CHECKING:
    from computemesh.orchestrator.orchestrator import Orchestrator


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set or ``timeout`` passes; a cancellation is never lost.

    (``asyncio.wait_for`` on Python 3.11 can swallow a cancel that arrives as the event
    is set, which would leave a background loop running after ``stop``.)
    """
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()


class Placement:
    """Places jobs for the orchestrator and serves its placement queue."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self._placing: set[str] = set()
        """Jobs in a placement round now (the queue skips them)."""
        self._settled: dict[str, asyncio.Event] = {}
        """Job id -> set once the job left the queue (placed or failed)."""

    async def place(
        self, job_id: str, *, exclude: Collection[str] = (), count: int | None = None
    ) -> list[dict[str, Any]]:
        """Contract ``count`` providers for the job; queue it while capacity is short.

        ``count`` defaults to the spec's replicas; providers in ``exclude`` are not contracted.
        A permanent reason raises ``NoProviderError`` (the job ends ``no_provider``). A
        transient one queues the job (status ``queued``, see ``drain_queue``); this returns
        its contracts once the queue placed it, or ``[]`` after ``placement_timeout_s`` with
        the job still queued.
        """
        jobs, verification = self.orchestrator.jobs, self.orchestrator.verification
        spec = parse_job_spec(jobs.get(job_id).spec)
        exclude = {*exclude, *verification.excluded()}
        count = count or verification.initial_replicas(spec)
        jobs.set_status(job_id, "bidding")
        contracts = await self._attempt(job_id, spec, frozenset(exclude), count or spec.replicas)
        if contracts is not None:
            return contracts
        await self.wait_settled(job_id, self.orchestrator.settings.placement_timeout_s)
        record = jobs.get(job_id)
        if record.status == "no_provider":
            raise NoProviderError(
                f"no provider can take job {spec.name!r}", reasons=record.reason.splitlines()
            )
        return [] if record.status == "queued" else record.contracts

    async def resume(self, job_id: str, *, exclude: Collection[str] = ()) -> list[dict[str, Any]]:
        """Place the job again, away from ``exclude``, resuming from its latest checkpoint.

        Contracts of providers in ``exclude`` without a result are superseded; the new ones
        name the latest checkpoint in ``resume_from`` (as every placement of a job with a
        checkpoint does). Raises MeshError (code "no_checkpoint") for a job without one.
        """
        jobs = self.orchestrator.jobs
        if self.orchestrator.checkpoints.latest_digest(job_id) is None:
            raise MeshError(f"job {job_id} has no checkpoint to resume from", code="no_checkpoint")
        record = jobs.get(job_id)
        reported = {document["body"]["contract_id"] for document in record.results}
        for contract in record.contracts:
            terms = contract["terms"]
            if terms["provider"] in exclude and terms["contract_id"] not in reported:
                jobs.supersede_contract(job_id, terms["contract_id"])
        record = jobs.get(job_id)
        missing = self.missing_replicas(record)
        if missing <= 0:
            return record.contracts
        held = {contract["terms"]["provider"] for contract in record.contracts}
        return await self.orchestrator.place(job_id, exclude={*exclude, *held}, count=missing)

    async def drain_queue(self) -> list[str]:
        """Try each queued job once, first in queue order first; the ids now placed.

        A job that still does not fit keeps its place and lets the next ones try
        (backfilling): capacity too small for the first job may fit a later one.
        """
        placed = []
        for entry in self.orchestrator.jobs.queue.ordered():
            if entry.job_id in self._placing:
                continue
            record = self.orchestrator.jobs.get(entry.job_id)
            spec = parse_job_spec(record.spec)
            missing = self.missing_replicas(record)
            if record.is_final or missing <= 0:
                self.settle(entry.job_id)
                continue
            held = {contract["terms"]["provider"] for contract in record.contracts}
            exclude = frozenset({*held, *self.orchestrator.verification.excluded()})
            with contextlib.suppress(NoProviderError):
                if await self._attempt(entry.job_id, spec, exclude, missing) is not None:
                    placed.append(entry.job_id)
        return placed

    def missing_replicas(self, record: JobRecord) -> int:
        """Replicas the job still needs contracted: what its verification policy places
        (initially, or more once a verdict asked) less the contracts it holds."""
        spec = parse_job_spec(record.spec)
        wanted = self.orchestrator.verification.replicas_for(record.job_id, spec)
        return wanted - len(record.contracts)

    def settle(self, job_id: str) -> None:
        """The job left the queue (placed or failed): wake whoever waits for it."""
        self.orchestrator.jobs.queue.remove(job_id)
        self._settled.setdefault(job_id, asyncio.Event()).set()

    async def wait_settled(self, job_id: str, timeout: float) -> None:
        """Until the job leaves the queue, or ``timeout`` passes."""
        await wait_event(self._settled.setdefault(job_id, asyncio.Event()), timeout)

    async def _attempt(
        self, job_id: str, spec: JobSpec, exclude: frozenset[str], wanted: int
    ) -> list[dict[str, Any]] | None:
        """One placement round: the contracts, or None when the job was queued."""
        jobs = self.orchestrator.jobs
        self._placing.add(job_id)
        try:
            contracts = await self._place_once(job_id, spec, exclude, wanted)
        except NoProviderError as exc:
            if exc.retryable:
                self._settled.setdefault(job_id, asyncio.Event()).clear()
                jobs.queue.enqueue(job_id, priority=spec.priority, reason=exc.message)
                jobs.set_status(job_id, "queued", "\n".join(exc.reasons))
                return None
            jobs.set_status(job_id, "no_provider", "\n".join(exc.reasons))
            self.settle(job_id)
            raise
        finally:
            self._placing.discard(job_id)
        self.settle(job_id)
        return contracts

    async def _place_once(
        self, job_id: str, spec: JobSpec, exclude: frozenset[str], wanted: int
    ) -> list[dict[str, Any]]:
        bidding = self.orchestrator.bidding
        collection = await bidding.collect(job_id, spec, exclude, wanted)
        fitting, rejected = bidding.screen(spec, collection.bids)
        fitting = [(provider, bid) for provider, bid in fitting if provider not in exclude]
        contracts: list[dict[str, Any]] = []
        failures: list[str] = []
        for provider, bid in rank_bids(spec, fitting):
            if len(contracts) == wanted:
                break
            try:
                contracts.append(await self.orchestrator.contract_bid(job_id, provider, bid))
            except MeshError as exc:
                failures.append(f"{abbreviate_did(provider)}: commit refused: {exc.message}")
        if len(contracts) < wanted:
            raise bidding.no_provider(spec, collection, rejected + failures, len(contracts))
        return contracts
