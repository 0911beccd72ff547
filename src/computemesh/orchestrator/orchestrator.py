"""The consumer's orchestrator: bid, pick, contract, collect and verify results.

Life of a job here: ``submit`` writes it to the store (durable before acknowledged);
``place`` broadcasts a bid request, collects signed bids for a bounded window (closing early
once every known node answered), re-checks each bid against the spec, signs contracts with
the cheapest fitting providers and has them countersigned; ``await_outcome`` waits for the
providers' signed results (pushed, or fetched when the push was missed) and verifies each
one against its contract and the spec before the job counts as done.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from computemesh.actor import Actor, Inbound, behaviours
from computemesh.identity.canonical import canonical_json
from computemesh.identity.did import abbreviate_did
from computemesh.matching import max_charge, rank_bids, unmet_requirements
from computemesh.models.errors import MeshError, NoProviderError, SpecError, VerificationError
from computemesh.models.job import JobSpec
from computemesh.models.market import Advertisement, Bid, BidRefusal, BidRequest, ContractTerms
from computemesh.models.validation import parse_job_spec, parse_model
from computemesh.orchestrator.bids import BidCollection
from computemesh.orchestrator.outcome import Outcome, judge_outcome
from computemesh.protocol import propose_contract, spec_digest, verify_contract
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


TRANSIENT_MARKS = ("free now", "capacity was taken", "no provider answered")


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
    ) -> None:
        self.actor = actor
        self.jobs = jobs
        self.settings = settings or OrchestratorSettings()
        self.known_nodes: dict[str, Advertisement] = {}
        self._collections: dict[str, BidCollection] = {}
        self._result_arrived: dict[str, asyncio.Event] = {}
        self._discovery: dict[str, Advertisement] | None = None
        for behavior, handler in (
            (behaviours.BID, self.on_bid),
            (behaviours.BID_REFUSAL, self.on_bid_refusal),
            (behaviours.RESULT, self.on_result),
            (behaviours.ADVERTISEMENT, self.on_advertisement),
        ):
            actor.register(behavior, handler)

    async def start(self) -> None:
        await self.actor.start()

    async def stop(self) -> None:
        await self.actor.stop()

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
        self.known_nodes[inbound.sender] = advert
        if self._discovery is not None:
            self._discovery[inbound.sender] = advert

    # Submission and placement -------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        """Store the job and return its id; the spec must be resolved (inputs inline)."""
        if not spec.is_resolved():
            raise SpecError("resolve the spec's inputs before submitting (load_job_spec does)")
        check_spec_fits_envelope(spec, self.actor.verifier.max_bytes)
        job_id = new_id()
        self.jobs.create(job_id, spec.name, spec.model_dump(mode="json"))
        return job_id

    async def place(self, job_id: str) -> list[dict[str, Any]]:
        """Contract ``replicas`` providers for the job, retrying while capacity is short."""
        spec = parse_job_spec(self.jobs.get(job_id).spec)
        self.jobs.set_status(job_id, "bidding")
        deadline = time.monotonic() + self.settings.placement_timeout_s
        while True:
            try:
                contracts = await self._place_once(job_id, spec)
            except NoProviderError as exc:
                if not exc.retryable or time.monotonic() >= deadline:
                    self.jobs.set_status(job_id, "no_provider", "\n".join(exc.reasons))
                    raise
                await asyncio.sleep(self.settings.retry_interval_s)
                continue
            return contracts

    async def _place_once(self, job_id: str, spec: JobSpec) -> list[dict[str, Any]]:
        collection = await self._collect_bids(job_id, spec)
        fitting, rejected = self._screen_bids(spec, collection.bids)
        contracts: list[dict[str, Any]] = []
        failures: list[str] = []
        for provider, bid in rank_bids(fitting):
            if len(contracts) == spec.replicas:
                break
            try:
                contracts.append(await self._contract(job_id, spec, provider, bid))
            except MeshError as exc:
                failures.append(f"{abbreviate_did(provider)}: commit refused: {exc.message}")
        if len(contracts) < spec.replicas:
            raise self._no_provider(spec, collection, rejected + failures, len(contracts))
        return contracts

    async def _collect_bids(self, job_id: str, spec: JobSpec) -> BidCollection:
        request = BidRequest(request_id=new_id(), job_id=job_id, spec=spec)
        expected = len(self.known_nodes) or None
        collection = BidCollection(request_id=request.request_id, expected=expected)
        self._collections[request.request_id] = collection
        try:
            await self.actor.broadcast(
                behaviours.TOPIC_BID_REQUESTS,
                behaviours.BID_REQUEST,
                request.model_dump(mode="json"),
            )
            await collection.wait(self.settings.bid_window_s)
        finally:
            del self._collections[request.request_id]
        return collection

    @staticmethod
    def _screen_bids(
        spec: JobSpec, bids: list[tuple[str, Bid]]
    ) -> tuple[list[tuple[str, Bid]], list[str]]:
        """Bids that truly fit, and why the others were set aside."""
        fitting, rejected = [], []
        for provider, bid in bids:
            reasons = unmet_requirements(spec, bid.advertisement, provider)
            if bid.price_per_cpu_hour != bid.advertisement.price_per_cpu_hour:
                reasons.append("bid price differs from its advertisement")
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
        answered = len(collection.bids) + len(collection.refusals)
        if answered == 0:
            reasons.append(f"no provider answered within {self.settings.bid_window_s:g} s")
        error = NoProviderError(
            f"no provider can take job {spec.name!r}: {placed} of {spec.replicas} placed,"
            f" {len(collection.bids)} bid(s), {len(collection.refusals)} refusal(s)",
            reasons=reasons,
            hint="relax the job's resources or constraints, or add nodes (`cmesh status`)",
        )
        # Only capacity that may free up (or nodes still starting) is worth waiting for.
        error.retryable = all(is_transient(reason) for reason in reasons)
        return error

    async def _contract(
        self, job_id: str, spec: JobSpec, provider: str, bid: Bid
    ) -> dict[str, Any]:
        terms = ContractTerms(
            contract_id=new_id(),
            job_id=job_id,
            consumer=self.actor.did,
            provider=provider,
            spec_sha256=spec_digest(spec),
            price_per_cpu_hour=bid.price_per_cpu_hour,
            max_charge=max_charge(spec, bid.price_per_cpu_hour),
            created_at_ms=int(time.time() * 1000),
        )
        self._result_arrived[terms.contract_id] = asyncio.Event()
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
        collection = self._collections.get(bid.request_id)
        if collection is not None:
            collection.add_bid(inbound.sender, bid)

    async def on_bid_refusal(self, inbound: Inbound) -> None:
        refusal = parse_model(BidRefusal, inbound.payload, what="bid refusal")
        collection = self._collections.get(refusal.request_id)
        if collection is not None:
            collection.add_refusal(inbound.sender, refusal)

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
        """Verify and store one signed result; judge the job once every replica reported."""
        record = self.jobs.find(job_id)
        outcome = judge_outcome(record, [*record.results, document])
        if outcome.rejected:
            log.warning("job %s: result rejected: %s", job_id, outcome.rejected)
            raise VerificationError(outcome.rejected)
        if outcome.final:
            self.jobs.record_outcome(
                record.job_id,
                results=outcome.results,
                status=outcome.status,
                verified=outcome.verified,
                reason=outcome.reason,
            )
        else:
            self.jobs.record_outcome(
                record.job_id,
                results=outcome.results,
                status="running",
                verified=False,
                reason="",
            )
        for contract_id in outcome.contract_ids:
            event = self._result_arrived.get(contract_id)
            if event is not None:
                event.set()
        return outcome

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


def is_transient(reason: str) -> bool:
    return any(mark in reason for mark in TRANSIENT_MARKS)
