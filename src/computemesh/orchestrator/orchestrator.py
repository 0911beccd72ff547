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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from computemesh.actor import Actor, Inbound, behaviours
from computemesh.identity.canonical import canonical_json
from computemesh.identity.did import abbreviate_did
from computemesh.matching import explain, match_job, max_charge, rank_bids, unmet_requirements
from computemesh.models.ensemble import EnsembleSpec
from computemesh.models.errors import MeshError, NoProviderError, SpecError, VerificationError
from computemesh.models.job import JobSpec
from computemesh.models.market import (
    Advertisement,
    Bid,
    BidRefusal,
    BidRequest,
    ContractTerms,
    Heartbeat,
)
from computemesh.models.validation import parse_job_spec, parse_model
from computemesh.orchestrator.bids import BidCollection
from computemesh.orchestrator.checkpoints import CheckpointDesk
from computemesh.orchestrator.ensembles import EnsembleOutcome, deploy_ensemble
from computemesh.orchestrator.liveness import LivenessBounds, NodeState
from computemesh.orchestrator.logs import LogDesk
from computemesh.orchestrator.mesh_view import MeshView
from computemesh.orchestrator.migration import Migration
from computemesh.orchestrator.outcome import Outcome, judge_outcome
from computemesh.orchestrator.payments import Payments, escrow_for_commit
from computemesh.orchestrator.recovery import Recovery, RecoveryReport
from computemesh.orchestrator.verify_flow import (
    VerificationFlow,
    consumer_verification,
    place_more_replicas,
)
from computemesh.protocol import propose_contract, spec_digest, verify_contract
from computemesh.settlement import Ledger, Receipt, SettlementError
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


TRANSIENT_MARKS = ("free now", "capacity was taken", "no provider answered", "did not answer")


ENVELOPE_HEADROOM_BYTES = 16 * 1024
"""Room left in an envelope for its header, the contract and the bid request around a spec."""


def new_id() -> str:
    return uuid.uuid4().hex


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
        self._more_replicas: dict[str, asyncio.Task[None]] = {}
        """Job id -> the placement of replicas a verdict asked for, while it runs."""
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
        self._probes: set[asyncio.Task[None]] = set()
        self._cancels: set[asyncio.Task[Cancellation]] = set()
        self.migration = Migration(self)
        self._node_joined = asyncio.Event()
        self.on_node_dead = self.view.on_node_dead
        """Callbacks called with the DID of each node declared dead."""
        self._collections: dict[str, BidCollection] = {}
        self._placing: set[str] = set()
        self._settled: dict[str, asyncio.Event] = {}
        self._advert_asked: dict[str, float] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._result_arrived: dict[str, asyncio.Event] = {}
        self._discovery: dict[str, Advertisement] | None = None
        self.recovery = Recovery(self)
        self.on_node_dead.append(self.recovery.on_node_dead)
        self.recovery.on_relocated.append(self.verification.note_timeout)
        self.view.on_uptime.append(self.verification.note_uptime)
        self.checkpoints = CheckpointDesk(jobs, actor.did)
        self.logs = LogDesk(jobs)
        for behavior, handler in (
            (behaviours.CHECKPOINT, self.checkpoints.on_checkpoint),
            (behaviours.CHECKPOINT_FETCH, self.checkpoints.on_checkpoint_fetch),
            (behaviours.LOG, self.logs.on_log),
            (behaviours.BID, self.on_bid),
            (behaviours.BID_REFUSAL, self.on_bid_refusal),
            (behaviours.RESULT, self.on_result),
            (behaviours.ADVERTISEMENT, self.on_advertisement),
            (behaviours.HEARTBEAT, self.on_heartbeat),
        ):
            actor.register(behavior, handler)

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
        for task in (*self._probes, *self._cancels):
            task.cancel()
        await asyncio.gather(*self._probes, *self._cancels, return_exceptions=True)
        placements = list(self._more_replicas.values())
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
        """Place the job again, away from ``exclude``, resuming from its latest checkpoint.

        Contracts of providers in ``exclude`` without a result are superseded; the new ones
        name the latest checkpoint in ``resume_from`` (as every placement of a job with a
        checkpoint does). Raises MeshError (code "no_checkpoint") for a job without one.
        """
        if self.checkpoints.latest_digest(job_id) is None:
            raise MeshError(f"job {job_id} has no checkpoint to resume from", code="no_checkpoint")
        record = self.jobs.get(job_id)
        reported = {document["body"]["contract_id"] for document in record.results}
        for contract in record.contracts:
            terms = contract["terms"]
            if terms["provider"] in exclude and terms["contract_id"] not in reported:
                self.jobs.supersede_contract(job_id, terms["contract_id"])
        record = self.jobs.get(job_id)
        missing = self.missing_replicas(record)
        if missing <= 0:
            return record.contracts
        held = {contract["terms"]["provider"] for contract in record.contracts}
        return await self.place(job_id, exclude={*exclude, *held}, count=missing)

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

    async def _stop_loops(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []

    @property
    def known_nodes(self) -> dict[str, Advertisement]:
        """The advertisement of every indexed (live, plausible) node."""
        index = self.view.index
        return {did: index.advertisement(did) for did in index.providers()}

    def node_states(self) -> dict[str, NodeState]:
        """Alive, suspect or dead, per node heard from."""
        return self.view.node_states()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            self.view.sweep(time.monotonic())

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
        """Contract ``count`` providers for the job; queue it while capacity is short.

        ``count`` defaults to the spec's replicas; providers in ``exclude`` are not contracted.
        A permanent reason raises ``NoProviderError`` (the job ends ``no_provider``). A
        transient one queues the job (status ``queued``, see ``drain_queue``); this returns
        its contracts once the queue placed it, or ``[]`` after ``placement_timeout_s`` with
        the job still queued.
        """
        spec = parse_job_spec(self.jobs.get(job_id).spec)
        exclude = {*exclude, *self.verification.excluded()}
        count = count or self.verification.initial_replicas(spec)
        self.jobs.set_status(job_id, "bidding")
        contracts = await self._attempt(job_id, spec, frozenset(exclude), count or spec.replicas)
        if contracts is not None:
            return contracts
        await self._wait_settled(job_id, self.settings.placement_timeout_s)
        record = self.jobs.get(job_id)
        if record.status == "no_provider":
            raise NoProviderError(
                f"no provider can take job {spec.name!r}", reasons=record.reason.splitlines()
            )
        return [] if record.status == "queued" else record.contracts

    async def drain_queue(self) -> list[str]:
        """Try each queued job once, first in queue order first; the ids now placed.

        A job that still does not fit keeps its place and lets the next ones try
        (backfilling): capacity too small for the first job may fit a later one.
        """
        placed = []
        for entry in self.jobs.queue.ordered():
            if entry.job_id in self._placing:
                continue
            record = self.jobs.get(entry.job_id)
            spec = parse_job_spec(record.spec)
            missing = self.missing_replicas(record)
            if record.is_final or missing <= 0:
                self._settle(entry.job_id)
                continue
            held = {contract["terms"]["provider"] for contract in record.contracts}
            exclude = frozenset({*held, *self.verification.excluded()})
            with contextlib.suppress(NoProviderError):
                if await self._attempt(entry.job_id, spec, exclude, missing) is not None:
                    placed.append(entry.job_id)
        return placed

    def missing_replicas(self, record: JobRecord) -> int:
        """Replicas the job still needs contracted: what its verification policy places
        (initially, or more once a verdict asked) less the contracts it holds."""
        spec = parse_job_spec(record.spec)
        return self.verification.replicas_for(record.job_id, spec) - len(record.contracts)

    def queue_position(self, job_id: str) -> int | None:
        return self.jobs.queue.position(job_id)

    async def deploy_ensemble(
        self, ensemble: EnsembleSpec, *, timeout: float | None = None
    ) -> EnsembleOutcome:
        """Place, contract and run every allocation together (see ``ensembles``)."""
        longest = max(spec.timeout_s for spec in ensemble.allocations)
        return await deploy_ensemble(self, ensemble, timeout=timeout or longest + 30.0)

    async def _attempt(
        self, job_id: str, spec: JobSpec, exclude: frozenset[str], wanted: int
    ) -> list[dict[str, Any]] | None:
        """One placement round: the contracts, or None when the job was queued."""
        self._placing.add(job_id)
        try:
            contracts = await self._place_once(job_id, spec, exclude, wanted)
        except NoProviderError as exc:
            if exc.retryable:
                self._settled.setdefault(job_id, asyncio.Event()).clear()
                self.jobs.queue.enqueue(job_id, priority=spec.priority, reason=exc.message)
                self.jobs.set_status(job_id, "queued", "\n".join(exc.reasons))
                return None
            self.jobs.set_status(job_id, "no_provider", "\n".join(exc.reasons))
            self._settle(job_id)
            raise
        finally:
            self._placing.discard(job_id)
        self._settle(job_id)
        return contracts

    def _settle(self, job_id: str) -> None:
        """The job left the queue (placed or failed): wake whoever waits for it."""
        self.jobs.queue.remove(job_id)
        self._settled.setdefault(job_id, asyncio.Event()).set()

    async def _wait_settled(self, job_id: str, timeout: float) -> None:
        await wait_event(self._settled.setdefault(job_id, asyncio.Event()), timeout)

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

    async def _place_once(
        self, job_id: str, spec: JobSpec, exclude: frozenset[str], wanted: int
    ) -> list[dict[str, Any]]:
        collection = await self._collect_bids(job_id, spec, exclude, wanted)
        fitting, rejected = self._screen_bids(spec, collection.bids)
        fitting = [(provider, bid) for provider, bid in fitting if provider not in exclude]
        contracts: list[dict[str, Any]] = []
        failures: list[str] = []
        for provider, bid in rank_bids(spec, fitting):
            if len(contracts) == wanted:
                break
            try:
                contracts.append(await self.contract_bid(job_id, provider, bid))
            except MeshError as exc:
                failures.append(f"{abbreviate_did(provider)}: commit refused: {exc.message}")
        if len(contracts) < wanted:
            raise self._no_provider(spec, collection, rejected + failures, len(contracts))
        return contracts

    async def bid_from(self, job_id: str, provider: str) -> Bid:
        """Ask ``provider`` alone for a bid on the job (its placement was decided already).

        Raises ``NoProviderError`` (the job ends ``no_provider``) unless it bids and the
        bid fits the spec.
        """
        spec = parse_job_spec(self.jobs.get(job_id).spec)
        self.jobs.set_status(job_id, "bidding")
        bid, collection, rejected = await self._sole_bid(job_id, spec, provider)
        if bid is not None:
            return bid
        error = self._no_provider(spec, collection, rejected, 0)
        self.jobs.set_status(job_id, "no_provider", "\n".join(error.reasons))
        raise error

    async def quote(self, job_id: str, provider: str) -> Bid | None:
        """``provider``'s bid on the job if it bids and the bid fits, else None; unlike
        ``bid_from``, the job's status is left as it is (it may be running)."""
        spec = parse_job_spec(self.jobs.get(job_id).spec)
        bid, _, _ = await self._sole_bid(job_id, spec, provider)
        return bid

    async def _sole_bid(
        self, job_id: str, spec: JobSpec, provider: str
    ) -> tuple[Bid | None, BidCollection, list[str]]:
        collection = await self._ask(job_id, spec, [provider], 1, broadcast=False)
        fitting, rejected = self._screen_bids(spec, collection.bids)
        bid = next((bid for bidder, bid in fitting if bidder == provider), None)
        return bid, collection, rejected

    async def contract_bid(self, job_id: str, provider: str, bid: Bid) -> dict[str, Any]:
        """Contract the job with ``provider`` on its ``bid``; its capacity is promised."""
        spec = parse_job_spec(self.jobs.get(job_id).spec)
        contract = await self._contract(job_id, spec, provider, bid)
        self.view.promise(
            contract["terms"]["contract_id"], provider, spec.resources, time.monotonic()
        )
        if self.jobs.get(job_id).is_final:  # cancelled while the commit was in flight
            await self.cancel_allocation(contract["terms"])
        return contract

    def candidates(self, spec: JobSpec, exclude: frozenset[str], wanted: int) -> list[str]:
        """The indexed nodes to ask first, best first: ``wanted x candidate_factor`` at most;
        suspect nodes (heartbeats late) after the others, in their order."""
        limit = wanted * self.settings.candidate_factor
        ranked = match_job(self.view.index, spec, limit=limit + len(exclude))
        suspects = self.view.suspects()
        chosen = [c.provider for c in ranked if c.provider not in exclude][:limit]
        return sorted(chosen, key=lambda did: did in suspects)

    def _measure_rtt(self, dids: list[str]) -> None:
        """Ping, in the background, those of ``dids`` whose round trip is not known fresh."""
        if self.settings.region is None:
            return
        for did in self.view.rtt_unknown(dids, time.monotonic()):
            probe = asyncio.create_task(self._ping(did))
            self._probes.add(probe)
            probe.add_done_callback(self._probes.discard)

    async def _ping(self, did: str) -> None:
        started = time.perf_counter()
        payload = {"sent_ms": int(time.time() * 1000)}
        try:
            await self.actor.request(
                did, behaviours.PING, payload, timeout=self.settings.request_timeout_s, once=True
            )
        except MeshError as exc:
            log.debug("ping to %s: %s", abbreviate_did(did), exc.code)
            return
        self.view.measured_rtt(did, (time.perf_counter() - started) * 1000.0, time.monotonic())

    async def _collect_bids(
        self, job_id: str, spec: JobSpec, exclude: frozenset[str], wanted: int
    ) -> BidCollection:
        """Ask the index's candidates directly; broadcast too when they are too few.

        The broadcast copy names the nodes asked directly, which ignore it. The window
        closes early once every node asked answered (every indexed node, when broadcast)
        or the best ``wanted`` candidates all bid.
        """
        chosen = self.candidates(spec, exclude, wanted)
        self._measure_rtt(chosen)
        return await self._ask(job_id, spec, chosen, wanted, broadcast=len(chosen) < wanted)

    async def _ask(
        self, job_id: str, spec: JobSpec, chosen: list[str], wanted: int, *, broadcast: bool
    ) -> BidCollection:
        request = BidRequest(request_id=new_id(), job_id=job_id, spec=spec)
        collection = BidCollection(
            request_id=request.request_id,
            expected=frozenset(self.view.index.providers() if broadcast else chosen),
            preferred=frozenset() if broadcast else frozenset(chosen[:wanted]),
        )
        self._collections[request.request_id] = collection
        try:
            payload = request.model_dump(mode="json")
            await asyncio.gather(
                *(self.actor.send(did, behaviours.BID_REQUEST, payload) for did in chosen)
            )
            if broadcast:
                await self.actor.broadcast(
                    behaviours.TOPIC_BID_REQUESTS,
                    behaviours.BID_REQUEST,
                    request.model_copy(update={"asked": chosen}).model_dump(mode="json"),
                )
            await collection.wait(self.settings.bid_window_s)
        finally:
            del self._collections[request.request_id]
        return collection

    def _screen_bids(
        self, spec: JobSpec, bids: list[tuple[str, Bid]]
    ) -> tuple[list[tuple[str, Bid]], list[str]]:
        """Bids that truly fit, and why the others were set aside.

        A bid is judged with this consumer's own reputation of its provider in place of the
        advertised one; a provider caught in a fraud is set aside whatever it offers.
        """
        fitting, rejected = [], []
        excluded = self.verification.excluded()
        for provider, bid in bids:
            if provider in excluded:
                rejected.append(
                    f"{abbreviate_did(provider)}: bid set aside: excluded after a proven fraud"
                )
                continue
            reputation = self.verification.reputation_of(provider)
            advert = bid.advertisement.model_copy(update={"reputation": reputation})
            reasons = unmet_requirements(spec, advert, provider)
            if bid.rates != bid.advertisement.rates:
                reasons.append("bid rates differ from its advertisement")
            if reasons:
                rejected.append(f"{abbreviate_did(provider)}: bid set aside: {'; '.join(reasons)}")
            else:
                fitting.append((provider, bid))
        return fitting, rejected

    def _no_provider(
        self, spec: JobSpec, collection: BidCollection, problems: list[str], placed: int
    ) -> NoProviderError:
        reasons = [
            f"{abbreviate_did(provider)}: {'; '.join(refusal.reasons)}"
            for provider, refusal in collection.refusals
        ] + problems
        reasons.extend(
            f"{abbreviate_did(did)}: did not answer within {self.settings.bid_window_s:g} s"
            for did in sorted(collection.silent())
        )
        if not collection.answered():
            reasons.append(f"no provider answered within {self.settings.bid_window_s:g} s")
        # Worth waiting for: some node short only of capacity that may free up, or silent.
        retryable = any(
            all(is_transient(reason) for reason in refusal.reasons)
            for _, refusal in collection.refusals
        ) or any(is_transient(line) for line in reasons[len(collection.refusals) :])
        reasons.extend(self._explanation_lines(spec, collection.answered()))
        error = NoProviderError(
            f"no provider can take job {spec.name!r}: {placed} of {spec.replicas} placed,"
            f" {len(collection.bids)} bid(s), {len(collection.refusals)} refusal(s)",
            reasons=reasons,
            hint="relax the job's resources or constraints, or add nodes (`cmesh status`)",
        )
        error.retryable = retryable
        return error

    def _explanation_lines(self, spec: JobSpec, answered: set[str]) -> list[str]:
        """Per hard constraint, what it removes from the index; near misses not heard from."""
        if not len(self.view.index):
            return []
        explanation = explain(self.view.index, spec)
        lines = [
            f"index: {effect.name} removes {effect.alone} of {explanation.nodes} node(s),"
            f" {effect.remaining} left after it"
            for effect in explanation.effects
            if effect.alone
        ]
        lines.extend(
            f"{abbreviate_did(miss.provider)}: near miss (advertised):"
            f" {'; '.join(reason for _, reason in miss.failed)}"
            for miss in explanation.nearest
            if miss.provider not in answered
        )
        return lines

    async def _contract(
        self, job_id: str, spec: JobSpec, provider: str, bid: Bid
    ) -> dict[str, Any]:
        terms = ContractTerms(
            contract_id=new_id(),
            job_id=job_id,
            consumer=self.actor.did,
            provider=provider,
            spec_sha256=spec_digest(spec),
            **bid.rates.model_dump(),
            max_charge=max_charge(spec, bid.rates),
            created_at_ms=int(time.time() * 1000),
            resume_from=self.checkpoints.latest_digest(job_id),
        )
        self._result_arrived[terms.contract_id] = asyncio.Event()
        with escrow_for_commit(self.payments, terms, spec):
            reply = await self.actor.request(
                provider,
                behaviours.COMMIT,
                {
                    "proposal": propose_contract(self.actor.identity, terms),
                    "spec": spec.model_dump(mode="json"),
                },
                timeout=self.settings.commit_timeout_s,
            )
            contract = reply.get("contract")
            signed = verify_contract(contract)
            if signed != terms:
                raise VerificationError("the provider countersigned other terms")
            assert isinstance(contract, dict)
            self.jobs.add_contract(job_id, contract)
        log.info("job %s contracted to %s", job_id, abbreviate_did(provider))
        return contract

    async def on_bid(self, inbound: Inbound) -> None:
        bid = parse_model(Bid, inbound.payload, what="bid")
        if inbound.sender not in self.view.index:
            self.view.advertised(inbound.sender, bid.advertisement, time.monotonic())
        collection = self._collections.get(bid.request_id)
        if collection is not None:
            collection.add_bid(inbound.sender, bid)

    async def on_bid_refusal(self, inbound: Inbound) -> None:
        refusal = parse_model(BidRefusal, inbound.payload, what="bid refusal")
        collection = self._collections.get(refusal.request_id)
        if collection is not None:
            collection.add_refusal(inbound.sender, refusal)

    # Cancelling ---------------------------------------------------------------------------

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
        record = self.jobs.find(job_id)
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
            self.jobs.set_status(record.job_id, "failed", CANCELLED_BY_CONSUMER)
            self._settle(record.job_id)
            ended = Outcome(results=[], final=True, status="failed", verified=False, reason="")
            self.settle(record.job_id, ended)
        done = await asyncio.gather(*(self.cancel_allocation(terms) for terms in contracts))
        for cancellation in done:
            self.jobs.record_event(record.job_id, "cancelled", cancellation.to_dict())
        return list(done)

    async def cancel_allocation(
        self, terms: Mapping[str, Any], *, refund: bool = True
    ) -> Cancellation:
        """Ask the provider of the contract ``terms`` to stop its allocation, return the
        capacity promised to it and, with ``refund``, refund its escrow (a relocation keeps
        the escrow of a contract whose checkpoint the job resumes from until the job is
        final: ``settle``). The contract's job is not touched."""
        contract_id, provider = str(terms["contract_id"]), str(terms["provider"])
        try:
            reply = await self.actor.request(
                provider,
                behaviours.CANCEL,
                {"contract_id": contract_id},
                timeout=self.settings.request_timeout_s,
            )
            state = _answered_state(reply)
        except MeshError as exc:
            state = exc.code
        self.view.release(contract_id)
        log.info("contract %s cancelled on %s: %s", contract_id, abbreviate_did(provider), state)
        refunded = self._refund(contract_id) if refund else False
        return Cancellation(contract_id, provider, state, refunded)

    def cancel_later(self, terms: Mapping[str, Any], *, refund: bool = True) -> None:
        """``cancel_allocation`` in the background (best effort; ``stop`` ends it)."""
        task = asyncio.create_task(self.cancel_allocation(terms, refund=refund))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    def _refund(self, contract_id: str) -> bool:
        if self.payments is None:
            return False
        try:
            return self.payments.refund(contract_id) is not None
        except SettlementError as exc:
            log.error("contract %s: refund failed: %s", contract_id, exc.message)
            return False

    # Results ------------------------------------------------------------------------------

    async def on_result(self, inbound: Inbound) -> None:
        """A pushed result: stored only if it verifies against its contract."""
        document = inbound.payload.get("result")
        body = document.get("body") if isinstance(document, dict) else None
        job_id = body.get("job_id") if isinstance(body, dict) else None
        if not isinstance(job_id, str):
            raise VerificationError("result without a job id")
        self.accept_result(job_id, document)

    def accept_result(self, job_id: str, document: object) -> Outcome | None:
        """Verify and store one signed result; judge the job once every replica reported.

        When the verdict wants more replicas, they are placed in the background (awaited by
        ``await_outcome`` when someone waits for the job, cancelled by ``stop``).
        """
        record = self.jobs.find(job_id)
        outcome = judge_outcome(record, [*record.results, document])
        if outcome.rejected:
            log.warning("job %s: result rejected: %s", job_id, outcome.rejected)
            raise VerificationError(outcome.rejected)
        outcome = self.verification.apply(record, outcome)
        if record.is_final:  # ended already (judged, cancelled): the stored verdict stands
            outcome = replace(
                outcome,
                results=record.results,
                status=record.status,
                verified=bool(record.verified),
                reason=record.reason,
            )
        if outcome.final:
            self.jobs.record_outcome(
                record.job_id,
                results=outcome.results,
                status=outcome.status,
                verified=outcome.verified,
                reason=outcome.reason,
            )
            self.settle(record.job_id, outcome, held=record.contracts)
        else:
            self.jobs.record_outcome(
                record.job_id,
                results=outcome.results,
                status="running",
                verified=False,
                reason=outcome.reason,
            )
        if outcome.more:
            self._place_more_replicas(record.job_id, outcome.more)
        for contract_id in outcome.contract_ids:
            self.view.release(contract_id)
            event = self._result_arrived.get(contract_id)
            if event is not None:
                event.set()
        return outcome

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

    def _place_more_replicas(self, job_id: str, count: int) -> None:
        """Start placing ``count`` more replicas of the job, unless that is under way."""
        running = self._more_replicas.get(job_id)
        if running is not None and not running.done():
            return
        placement = asyncio.create_task(place_more_replicas(self, job_id, count))
        self._more_replicas[job_id] = placement
        placement.add_done_callback(partial(self._placed_more, job_id))

    def _placed_more(self, job_id: str, placement: asyncio.Task[None]) -> None:
        if self._more_replicas.get(job_id) is placement:
            del self._more_replicas[job_id]
        failure = None if placement.cancelled() else placement.exception()
        if failure is not None:
            log.error("job %s: placing more replicas failed", job_id, exc_info=failure)

    async def fetch_results(self, job_id: str) -> JobRecord:
        """Ask each contracted provider for a result not yet received."""
        record = self.jobs.find(job_id)
        have = {doc["body"]["contract_id"] for doc in record.results if isinstance(doc, dict)}
        for contract in record.contracts:
            terms = parse_model(ContractTerms, contract["terms"], what="contract terms")
            if terms.contract_id in have:
                continue
            try:
                reply = await self.actor.request(
                    terms.provider,
                    behaviours.RESULT_FETCH,
                    {"contract_id": terms.contract_id},
                    timeout=self.settings.request_timeout_s,
                )
            except MeshError as exc:
                log.info("fetching %s from %s: %s", job_id, abbreviate_did(terms.provider), exc)
                await self.recovery.on_unreachable(record.job_id, terms, exc)
                continue
            if await self.recovery.on_fetched(record.job_id, terms, reply.get("result")):
                continue
            if reply.get("result") is not None:
                try:
                    self.accept_result(record.job_id, reply["result"])
                except VerificationError:
                    continue
        return self.jobs.get(record.job_id)

    async def await_outcome(self, job_id: str, *, timeout: float) -> JobRecord:
        """Wait until the job is final (results verified or failed), fetching when slow."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.jobs.get(job_id)
            if record.is_final:
                return record
            placement = self._more_replicas.get(job_id)
            if placement is not None and not placement.done():
                await asyncio.wait({placement})
                deadline = max(deadline, time.monotonic() + timeout)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return await self.fetch_results(job_id)
            await self._wait_any_result(record, min(remaining, self.settings.fetch_interval_s))
            if not self.jobs.get(job_id).is_final:
                await self.fetch_results(job_id)

    async def _wait_any_result(self, record: JobRecord, timeout: float) -> None:
        events = [
            self._result_arrived.setdefault(contract["terms"]["contract_id"], asyncio.Event())
            for contract in record.contracts
        ]
        waiters = [asyncio.create_task(event.wait()) for event in events if not event.is_set()]
        if not waiters:
            if record.status == "queued":
                await self._wait_settled(record.job_id, timeout)
            return
        _, pending = await asyncio.wait(
            waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()

    async def run(self, spec: JobSpec, *, timeout: float | None = None) -> JobRecord:
        """Submit, place and wait: the whole life of one job."""
        job_id = self.submit(spec)
        try:
            await self.place(job_id)
        except NoProviderError:
            return self.jobs.get(job_id)
        return await self.await_outcome(job_id, timeout=timeout or spec.timeout_s + 30.0)


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


def _answered_state(reply: Mapping[str, Any]) -> str:
    """A cancel reply's state: its result's status when it has one, else the allocation's."""
    result = reply.get("result")
    body = result.get("body") if isinstance(result, dict) else None
    state = body.get("status") if isinstance(body, dict) else reply.get("status")
    return state[:64] if isinstance(state, str) else "unknown"


def is_transient(reason: str) -> bool:
    return any(mark in reason for mark in TRANSIENT_MARKS)
