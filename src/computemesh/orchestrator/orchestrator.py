"""The consumer's orchestrator: bid, pick, contract, collect and verify results.

Life of a job here: ``submit`` writes it to the store (durable before acknowledged);
``place`` picks candidates from the node index (fed by the advertisement and heartbeat
streams, see ``mesh_view``), sends them the bid request directly (broadcasting it only when
the index is short), collects signed bids for a bounded window (closing early once every
node asked answered or the best candidates bid), re-checks each bid against the spec, signs
contracts with the cheapest fitting providers and has them countersigned; while capacity is
short the job waits in the durable placement queue; ``await_outcome`` waits for the
providers' signed results (pushed, or fetched when the push was missed) and verifies each
one against its contract and the spec before the job counts as done.

``Orchestrator`` is the facade over one module per phase: ``bids`` (whom to ask, the bid
window, screening), ``commit`` (contracts both sides signed), ``placement`` (rounds and the
placement queue), ``results`` (verified results, the wait for an outcome) and
``cancellation``; beside them ``recovery``, ``migration``, ``ensembles`` and
``verify_flow`` drive it through its public methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from computemesh.actor import Actor, Inbound, behaviours
from computemesh.identity.canonical import canonical_json
from computemesh.models.ensemble import EnsembleSpec
from computemesh.models.errors import NoProviderError, SpecError
from computemesh.models.job import JobSpec
from computemesh.models.market import Advertisement, Bid, Heartbeat
from computemesh.models.validation import parse_model
from computemesh.orchestrator.bids import Bidding, new_id
from computemesh.orchestrator.cancellation import Cancellation, Cancelling
from computemesh.orchestrator.checkpoints import CheckpointDesk
from computemesh.orchestrator.commit import contract_bid
from computemesh.orchestrator.ensembles import EnsembleOutcome, deploy_ensemble
from computemesh.orchestrator.liveness import LivenessBounds, NodeState
from computemesh.orchestrator.logs import LogDesk
from computemesh.orchestrator.mesh_view import MeshView
from computemesh.orchestrator.migration import Migration
from computemesh.orchestrator.outcome import Outcome
from computemesh.orchestrator.payments import Payments
from computemesh.orchestrator.placement import Placement, wait_event
from computemesh.orchestrator.recovery import Recovery, RecoveryReport
from computemesh.orchestrator.results import ResultDesk
from computemesh.orchestrator.verify_flow import VerificationFlow, consumer_verification
from computemesh.settlement import Ledger, Receipt
from computemesh.store import JobRecord, JobRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrchestratorSettings:
    bid_window_s: float = 1.0
    commit_timeout_s: float = 10.0
    placement_timeout_s: float = 60.0
    retry_interval_s: float = 0.5
    fetch_interval_s: float = 5.0
    request_timeout_s: float = 5.0
    candidate_factor: int = 4
    """Bid requests go directly to up to ``replicas x candidate_factor`` indexed nodes."""
    suspect_after_s: float = 2.5
    dead_after_s: float = 5.0
    sweep_interval_s: float = 0.5
    queue_retry_s: float = 5.0
    """Queued jobs are retried when capacity appears, and at least this often."""
    rediscover_after_s: float = 5.0
    """A heartbeat from a node not indexed asks it for its advertisement, at most this often."""
    region: str | None = None
    """The consumer's region: the round trips it measures to candidates (pinged once when
    unknown, fresh for ``rtt_ttl_s``) count as their latency to it (``mesh_view``)."""
    rtt_ttl_s: float = 300.0
    migration_check_s: float = 30.0
    """Running jobs whose spec allows migration are compared with the index's best
    candidates when a node joins it, and at least this often (``migration``)."""

    def liveness_bounds(self) -> LivenessBounds:
        return LivenessBounds(suspect_after_s=self.suspect_after_s, dead_after_s=self.dead_after_s)


ENVELOPE_HEADROOM_BYTES = 16 * 1024
"""Room left in an envelope for its header, the contract and the bid request around a spec."""


def check_spec_fits_envelope(spec: JobSpec, max_envelope_bytes: int) -> None:
    """A spec travels whole inside signed envelopes: refuse one that cannot fit."""
    size = len(canonical_json(spec.model_dump(mode="json")))
    limit = max_envelope_bytes - ENVELOPE_HEADROOM_BYTES
    if size > limit:
        raise SpecError(
            f"job spec is {size} bytes with its inputs inline; at most {limit} bytes can travel",
            hint="send fewer or smaller inputs",
        )


class Orchestrator:
    def __init__(
        self,
        *,
        actor: Actor,
        jobs: JobRepository,
        settings: OrchestratorSettings | None = None,
        ledger: Ledger | None = None,
        verification: VerificationFlow | None = None,
    ) -> None:
        self.actor = actor
        self.jobs = jobs
        self.settings = settings or OrchestratorSettings()
        self.verification = verification or consumer_verification(jobs, actor.identity, ledger)
        self.payments = (
            Payments(ledger=ledger, verifier=actor.identity) if ledger is not None else None
        )
        self.view = MeshView(
            self.settings.liveness_bounds(),
            region=self.settings.region,
            rtt_ttl_s=self.settings.rtt_ttl_s,
            reputation_of=self.verification.reputation_of,
        )
        self.verification.on_reputation.append(self.view.reputation_changed)
        self.bidding = Bidding(self)
        self.placement = Placement(self)
        self.results = ResultDesk(self)
        self.cancelling = Cancelling(self)
        self.migration = Migration(self)
        self._node_joined = asyncio.Event()
        self.on_node_dead = self.view.on_node_dead
        """Callbacks called with the DID of each node declared dead."""
        self._advert_asked: dict[str, float] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._discovery: dict[str, Advertisement] | None = None
        self.recovery = Recovery(self)
        self.on_node_dead.append(self.recovery.on_node_dead)
        self.recovery.on_relocated.append(self.verification.note_timeout)
        self.view.on_uptime.append(self.verification.note_uptime)
        self.checkpoints = CheckpointDesk(jobs, actor.did)
        self.logs = LogDesk(jobs)
        self._register_handlers()

    def _register_handlers(self) -> None:
        for behavior, handler in (
            (behaviours.CHECKPOINT, self.checkpoints.on_checkpoint),
            (behaviours.CHECKPOINT_FETCH, self.checkpoints.on_checkpoint_fetch),
            (behaviours.LOG, self.logs.on_log),
            (behaviours.BID, self.bidding.on_bid),
            (behaviours.BID_REFUSAL, self.bidding.on_bid_refusal),
            (behaviours.RESULT, self.results.on_result),
            (behaviours.ADVERTISEMENT, self.on_advertisement),
            (behaviours.HEARTBEAT, self.on_heartbeat),
        ):
            self.actor.register(behavior, handler)

    async def start(self) -> None:
        """Listen, follow the advertisement and heartbeat streams, and serve the queue."""
        await self.actor.start()
        await self.actor.join(behaviours.TOPIC_ADVERTISEMENTS)
        await self.actor.join(behaviours.TOPIC_HEARTBEATS)
        self._loops = [
            asyncio.create_task(self._sweep_loop()),
            asyncio.create_task(self._queue_loop()),
            asyncio.create_task(self._migration_loop()),
        ]

    async def stop(self) -> None:
        await self._stop_loops()
        background = (*self.bidding.probes, *self.cancelling.running)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        placements = list(self.results.more_replicas.values())
        for placement in placements:
            placement.cancel()
        await asyncio.gather(*placements, return_exceptions=True)
        await self.recovery.stop()
        self.view.flush_uptime(time.monotonic())
        await self.actor.stop()

    async def recover(self) -> RecoveryReport:
        """Take up the jobs a previous process left unfinished (see ``orchestrator.recovery``)."""
        return await self.recovery.recover()

    async def resume(self, job_id: str, *, exclude: Collection[str] = ()) -> list[dict[str, Any]]:
        """Place the job again, away from ``exclude``, resuming from its latest checkpoint
        (see ``Placement.resume``)."""
        return await self.placement.resume(job_id, exclude=exclude)

    # Discovery ----------------------------------------------------------------------------

    async def discover(self, window_s: float = 1.0) -> dict[str, Advertisement]:
        """Ask every node to describe itself; returns what answered within the window."""
        self._discovery = {}
        await self.actor.broadcast(behaviours.TOPIC_DISCOVER, behaviours.DISCOVER, {})
        await asyncio.sleep(window_s)
        found, self._discovery = self._discovery, None
        return found

    async def on_advertisement(self, inbound: Inbound) -> None:
        advert = parse_model(Advertisement, inbound.payload, what="advertisement")
        joined = inbound.sender not in self.view.index
        self.view.advertised(inbound.sender, advert, time.monotonic())
        if joined and inbound.sender in self.view.index:
            self._node_joined.set()
        if self._discovery is not None:
            self._discovery[inbound.sender] = advert

    async def on_heartbeat(self, inbound: Inbound) -> None:
        beat = parse_model(Heartbeat, inbound.payload, what="heartbeat")
        now = time.monotonic()
        if self.view.heartbeat(inbound.sender, beat, now):
            return
        if now - self._advert_asked.get(inbound.sender, -1e9) >= self.settings.rediscover_after_s:
            self._advert_asked[inbound.sender] = now
            await self.actor.send(inbound.sender, behaviours.DISCOVER, {})

    @property
    def known_nodes(self) -> dict[str, Advertisement]:
        """The advertisement of every indexed (live, plausible) node."""
        index = self.view.index
        return {did: index.advertisement(did) for did in index.providers()}

    def node_states(self) -> dict[str, NodeState]:
        """Alive, suspect or dead, per node heard from."""
        return self.view.node_states()

    # Background loops ---------------------------------------------------------------------

    async def _stop_loops(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            self.view.sweep(time.monotonic())

    async def _queue_loop(self) -> None:
        while True:
            await wait_event(self.view.capacity_changed, self.settings.queue_retry_s)
            self.view.capacity_changed.clear()
            try:
                await self.drain_queue()
            except Exception:
                log.exception("placing queued jobs failed; retrying later")

    async def _migration_loop(self) -> None:
        while True:
            await wait_event(self._node_joined, self.settings.migration_check_s)
            self._node_joined.clear()
            try:
                await self.migration.check()
            except Exception:
                log.exception("looking for better providers failed; retrying later")

    # Submission and placement -------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        """Store the job and return its id; the spec must be resolved (inputs inline)."""
        if not spec.is_resolved():
            raise SpecError("resolve the spec's inputs before submitting (load_job_spec does)")
        check_spec_fits_envelope(spec, self.actor.verifier.max_bytes)
        job_id = new_id()
        self.jobs.create(job_id, spec.name, spec.model_dump(mode="json"))
        return job_id

    async def place(
        self, job_id: str, *, exclude: Collection[str] = (), count: int | None = None
    ) -> list[dict[str, Any]]:
        """Contract ``count`` providers for the job; queue it while capacity is short
        (see ``Placement.place``)."""
        return await self.placement.place(job_id, exclude=exclude, count=count)

    async def drain_queue(self) -> list[str]:
        """Try each queued job once, in queue order; the ids now placed (see ``placement``)."""
        return await self.placement.drain_queue()

    def missing_replicas(self, record: JobRecord) -> int:
        """Replicas the job still needs contracted (see ``Placement.missing_replicas``)."""
        return self.placement.missing_replicas(record)

    def queue_position(self, job_id: str) -> int | None:
        return self.jobs.queue.position(job_id)

    async def deploy_ensemble(
        self, ensemble: EnsembleSpec, *, timeout: float | None = None
    ) -> EnsembleOutcome:
        """Place, contract and run every allocation together (see ``ensembles``)."""
        longest = max(spec.timeout_s for spec in ensemble.allocations)
        return await deploy_ensemble(self, ensemble, timeout=timeout or longest + 30.0)

    def candidates(self, spec: JobSpec, exclude: frozenset[str], wanted: int) -> list[str]:
        """The indexed nodes to ask for bids first, best first (see ``Bidding.candidates``)."""
        return self.bidding.candidates(spec, exclude, wanted)

    async def bid_from(self, job_id: str, provider: str) -> Bid:
        """Ask ``provider`` alone for a bid on the job (see ``Bidding.bid_from``)."""
        return await self.bidding.bid_from(job_id, provider)

    async def quote(self, job_id: str, provider: str) -> Bid | None:
        """``provider``'s fitting bid on the job, status untouched (see ``Bidding.quote``)."""
        return await self.bidding.quote(job_id, provider)

    async def contract_bid(self, job_id: str, provider: str, bid: Bid) -> dict[str, Any]:
        """Contract the job with ``provider`` on its ``bid``; its capacity is promised."""
        return await contract_bid(self, job_id, provider, bid)

    # Cancelling ---------------------------------------------------------------------------

    async def cancel(self, job_id: str, contract_id: str | None = None) -> list[Cancellation]:
        """Cancel the job, or only its allocation ``contract_id`` (see
        ``Cancelling.cancel``)."""
        return await self.cancelling.cancel(job_id, contract_id)

    async def cancel_allocation(
        self, terms: Mapping[str, Any], *, refund: bool = True
    ) -> Cancellation:
        """Stop the allocation of the contract ``terms`` on its node, return its capacity
        and, with ``refund``, refund its escrow (see ``Cancelling.cancel_allocation``)."""
        return await self.cancelling.cancel_allocation(terms, refund=refund)

    def cancel_later(self, terms: Mapping[str, Any], *, refund: bool = True) -> None:
        """``cancel_allocation`` in the background (best effort; ``stop`` ends it)."""
        self.cancelling.cancel_later(terms, refund=refund)

    # Results ------------------------------------------------------------------------------

    def accept_result(self, job_id: str, document: object) -> Outcome | None:
        """Verify and store one signed result; judge the job once every replica reported
        (see ``ResultDesk.accept_result``)."""
        return self.results.accept_result(job_id, document)

    def settle(
        self, job_id: str, outcome: Outcome, *, held: list[dict[str, Any]] | None = None
    ) -> list[Receipt]:
        """Settle the escrows of a job judged final (``Payments.settle_job``): its contracts
        (``held``, else the stored ones) and those it dropped, for their verified progress."""
        if self.payments is None:
            return []
        return self.payments.settle_job(
            self.jobs.get(job_id).contracts if held is None else held,
            self.jobs.superseded(job_id),
            outcome,
            self.checkpoints.document_by_digest(job_id),
        )

    async def fetch_results(self, job_id: str) -> JobRecord:
        """Ask each contracted provider for a result not yet received."""
        return await self.results.fetch_results(job_id)

    async def await_outcome(self, job_id: str, *, timeout: float) -> JobRecord:
        """Wait until the job is final (results verified or failed), fetching when slow."""
        return await self.results.await_outcome(job_id, timeout=timeout)

    async def run(self, spec: JobSpec, *, timeout: float | None = None) -> JobRecord:
        """Submit, place and wait: the whole life of one job."""
        job_id = self.submit(spec)
        try:
            await self.place(job_id)
        except NoProviderError:
            return self.jobs.get(job_id)
        return await self.await_outcome(job_id, timeout=timeout or spec.timeout_s + 30.0)
