"""The bid phase: ask candidates for signed bids, collect them over a bounded window,
screen them against the spec, and explain why no provider fits when none does.

``BidCollection`` gathers the answers to one bid request; ``Bidding`` picks whom to ask
from the index (measuring round trips to them when the consumer knows its region), asks
them directly (broadcasting too when the index is short) and screens what came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from computemesh.actor import Inbound, behaviours
from computemesh.identity.did import abbreviate_did
from computemesh.matching import explain, match_job, unmet_requirements
from computemesh.models.errors import MeshError, NoProviderError
from computemesh.models.job import JobSpec
from computemesh.models.market import Bid, BidRefusal, BidRequest
from computemesh.models.validation import parse_job_spec, parse_model

if TYPE_CHECKING:
    from computemesh.orchestrator.orchestrator import Orchestrator

log = logging.getLogger(__name__)

TRANSIENT_MARKS = ("free now", "capacity was taken", "no provider answered", "did not answer")


def new_id() -> str:
    """A fresh id for a job, a bid request or a contract."""
    return uuid.uuid4().hex


def is_transient(reason: str) -> bool:
    return any(mark in reason for mark in TRANSIENT_MARKS)


@dataclass
class BidCollection:
    """Bids and refusals that arrived for one request; ``done`` is set on early close.

    The window closes early once every node in ``expected`` answered, or once every node
    in ``preferred`` (the best candidates) bid. One answer per sender counts.
    """

    request_id: str
    expected: frozenset[str] = frozenset()
    preferred: frozenset[str] = frozenset()
    bids: list[tuple[str, Bid]] = field(default_factory=list)
    refusals: list[tuple[str, BidRefusal]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def add_bid(self, sender: str, bid: Bid) -> None:
        if any(existing == sender for existing, _ in self.bids):
            return
        self.bids.append((sender, bid))
        self._maybe_close()

    def add_refusal(self, sender: str, refusal: BidRefusal) -> None:
        if any(existing == sender for existing, _ in self.refusals):
            return
        self.refusals.append((sender, refusal))
        self._maybe_close()

    def answered(self) -> set[str]:
        return {sender for sender, _ in self.bids} | {sender for sender, _ in self.refusals}

    def silent(self) -> set[str]:
        """Nodes expected to answer that did not."""
        return set(self.expected) - self.answered()

    def _maybe_close(self) -> None:
        bidders = {sender for sender, _ in self.bids}
        everyone = bool(self.expected) and self.expected <= self.answered()
        best = bool(self.preferred) and self.preferred <= bidders
        if everyone or best:
            self.done.set()

    async def wait(self, window_s: float) -> None:
        """Until the window closes, or earlier (see the class docstring)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), timeout=window_s)


class Bidding:
    """Asks for bids on behalf of the orchestrator and judges what comes back."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self.collections: dict[str, BidCollection] = {}
        """Request id -> the collection its bids and refusals go to, while its window is open."""
        self.probes: set[asyncio.Task[None]] = set()
        """Round-trip measurements under way (``Orchestrator.stop`` cancels them)."""

    async def on_bid(self, inbound: Inbound) -> None:
        bid = parse_model(Bid, inbound.payload, what="bid")
        view = self.orchestrator.view
        if inbound.sender not in view.index:
            view.advertised(inbound.sender, bid.advertisement, time.monotonic())
        collection = self.collections.get(bid.request_id)
        if collection is not None:
            collection.add_bid(inbound.sender, bid)

    async def on_bid_refusal(self, inbound: Inbound) -> None:
        refusal = parse_model(BidRefusal, inbound.payload, what="bid refusal")
        collection = self.collections.get(refusal.request_id)
        if collection is not None:
            collection.add_refusal(inbound.sender, refusal)

    def candidates(self, spec: JobSpec, exclude: frozenset[str], wanted: int) -> list[str]:
        """The indexed nodes to ask first, best first: ``wanted x candidate_factor`` at most;
        suspect nodes (heartbeats late) after the others, in their order."""
        view = self.orchestrator.view
        limit = wanted * self.orchestrator.settings.candidate_factor
        ranked = match_job(view.index, spec, limit=limit + len(exclude))
        suspects = view.suspects()
        chosen = [c.provider for c in ranked if c.provider not in exclude][:limit]
        return sorted(chosen, key=lambda did: did in suspects)

    async def collect(
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

    async def bid_from(self, job_id: str, provider: str) -> Bid:
        """Ask ``provider`` alone for a bid on the job (its placement was decided already).

        Raises ``NoProviderError`` (the job ends ``no_provider``) unless it bids and the
        bid fits the spec.
        """
        jobs = self.orchestrator.jobs
        spec = parse_job_spec(jobs.get(job_id).spec)
        jobs.set_status(job_id, "bidding")
        bid, collection, rejected = await self._sole_bid(job_id, spec, provider)
        if bid is not None:
            return bid
        error = self.no_provider(spec, collection, rejected, 0)
        jobs.set_status(job_id, "no_provider", "\n".join(error.reasons))
        raise error

    async def quote(self, job_id: str, provider: str) -> Bid | None:
        """``provider``'s bid on the job if it bids and the bid fits, else None; unlike
        ``bid_from``, the job's status is left as it is (it may be running)."""
        spec = parse_job_spec(self.orchestrator.jobs.get(job_id).spec)
        bid, _, _ = await self._sole_bid(job_id, spec, provider)
        return bid

    async def _sole_bid(
        self, job_id: str, spec: JobSpec, provider: str
    ) -> tuple[Bid | None, BidCollection, list[str]]:
        collection = await self._ask(job_id, spec, [provider], 1, broadcast=False)
        fitting, rejected = self.screen(spec, collection.bids)
        bid = next((bid for bidder, bid in fitting if bidder == provider), None)
        return bid, collection, rejected

    def _measure_rtt(self, dids: list[str]) -> None:
        """Ping, in the background, those of ``dids`` whose round trip is not known fresh."""
        if self.orchestrator.settings.region is None:
            return
        for did in self.orchestrator.view.rtt_unknown(dids, time.monotonic()):
            probe = asyncio.create_task(self._ping(did))
            self.probes.add(probe)
            probe.add_done_callback(self.probes.discard)

    async def _ping(self, did: str) -> None:
        started = time.perf_counter()
        payload = {"sent_ms": int(time.time() * 1000)}
        timeout = self.orchestrator.settings.request_timeout_s
        try:
            await self.orchestrator.actor.request(
                did, behaviours.PING, payload, timeout=timeout, once=True
            )
        except MeshError as exc:
            log.debug("ping to %s: %s", abbreviate_did(did), exc.code)
            return
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        self.orchestrator.view.measured_rtt(did, elapsed_ms, time.monotonic())

    async def _ask(
        self, job_id: str, spec: JobSpec, chosen: list[str], wanted: int, *, broadcast: bool
    ) -> BidCollection:
        actor = self.orchestrator.actor
        request = BidRequest(request_id=new_id(), job_id=job_id, spec=spec)
        collection = BidCollection(
            request_id=request.request_id,
            expected=frozenset(self.orchestrator.view.index.providers() if broadcast else chosen),
            preferred=frozenset() if broadcast else frozenset(chosen[:wanted]),
        )
        self.collections[request.request_id] = collection
        try:
            payload = request.model_dump(mode="json")
            await asyncio.gather(
                *(actor.send(did, behaviours.BID_REQUEST, payload) for did in chosen)
            )
            if broadcast:
                await actor.broadcast(
                    behaviours.TOPIC_BID_REQUESTS,
                    behaviours.BID_REQUEST,
                    request.model_copy(update={"asked": chosen}).model_dump(mode="json"),
                )
            await collection.wait(self.orchestrator.settings.bid_window_s)
        finally:
            del self.collections[request.request_id]
        return collection

    def screen(
        self, spec: JobSpec, bids: list[tuple[str, Bid]]
    ) -> tuple[list[tuple[str, Bid]], list[str]]:
        """Bids that truly fit, and why the others were set aside.

        A bid is judged with this consumer's own reputation of its provider in place of the
        advertised one; a provider caught in a fraud is set aside whatever it offers.
        """
        fitting, rejected = [], []
        verification = self.orchestrator.verification
        excluded = verification.excluded()
        for provider, bid in bids:
            if provider in excluded:
                rejected.append(
                    f"{abbreviate_did(provider)}: bid set aside: excluded after a proven fraud"
                )
                continue
            reputation = verification.reputation_of(provider)
            advert = bid.advertisement.model_copy(update={"reputation": reputation})
            reasons = unmet_requirements(spec, advert, provider)
            if bid.rates != bid.advertisement.rates:
                reasons.append("bid rates differ from its advertisement")
            if reasons:
                rejected.append(f"{abbreviate_did(provider)}: bid set aside: {'; '.join(reasons)}")
            else:
                fitting.append((provider, bid))
        return fitting, rejected

    def no_provider(
        self, spec: JobSpec, collection: BidCollection, problems: list[str], placed: int
    ) -> NoProviderError:
        """Why ``placed`` of the spec's replicas found a provider: one reason per node, then
        the index's explanation; retryable when waiting may help (see ``is_transient``)."""
        window_s = self.orchestrator.settings.bid_window_s
        reasons = [
            f"{abbreviate_did(provider)}: {'; '.join(refusal.reasons)}"
            for provider, refusal in collection.refusals
        ] + problems
        reasons.extend(
            f"{abbreviate_did(did)}: did not answer within {window_s:g} s"
            for did in sorted(collection.silent())
        )
        if not collection.answered():
            reasons.append(f"no provider answered within {window_s:g} s")
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
        index = self.orchestrator.view.index
        if not len(index):
            return []
        explanation = explain(index, spec)
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
