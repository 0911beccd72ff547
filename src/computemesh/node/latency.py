"""Round trips to other nodes, measured over the mesh and advertised per region.

A node learns its peers from the advertisements it hears (``topic:adverts``, and the
direct answers to the ``discover`` it broadcasts once at start), tracks at most
``latency_max_peers`` of them, pings a few each round (``/mesh/node/ping``), and
advertises, per region of its peers, the round trip it measured (``latency_ms``).

The bookkeeping is pure (``LatencyBook``, the caller supplies the clock); ``LatencyProber``
does the pinging. Rules:

- Peers tracked: for each region, the peers ordered by a hash of this node's DID and
  theirs (so every node picks a different, stable sample), taken region by region in
  turn until ``max_peers``; so every region heard of is covered before any gets a second
  peer. The pool they are chosen from holds at most ``MAX_KNOWN_FACTOR x max_peers``
  peers (lowest hashes kept) and forgets a peer not advertised for ``peer_ttl_s``.
- A peer's round trip is the median of its last ``samples`` answers; a ping that fails
  adds no sample, and ``MAX_FAILURES`` failures in a row clear the peer's samples.
- A region's figure is the median of its peers' round trips (its own region included
  when it has peers there), in ms, rounded to ``ROUND_TO_DIGITS`` decimals. A peer can only make its
  answer slower, never faster, and the median lets a minority of slow peers pass.
- Pings are answered to anyone (``PingLimiter`` caps how many a second, for all senders
  together); a malformed one is refused with ``bad_ping``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from computemesh.actor import Actor, Inbound, behaviours
from computemesh.models.errors import MeshError
from computemesh.models.market import Advertisement
from computemesh.models.validation import parse_model

log = logging.getLogger(__name__)

MAX_RTT_MS = 60_000.0
"""Longest round trip kept (what the index accepts as plausible)."""
ROUND_TO_DIGITS = 2
MAX_FAILURES = 3
MAX_KNOWN_FACTOR = 16
MAX_SENT_MS = 2**53
FIRST_ROUND_DELAY_S = 1.0
"""The first round waits this long for the answers to the start-up ``discover``."""


def now_ms() -> int:
    return int(time.time() * 1000)


# Pure aggregation ----------------------------------------------------------------------------


def is_valid_rtt(rtt_ms: float) -> bool:
    return math.isfinite(rtt_ms) and 0.0 <= rtt_ms <= MAX_RTT_MS


def smoothed_rtt(samples: Iterable[float]) -> float | None:
    """The median of the valid samples; None without any."""
    kept = [sample for sample in samples if is_valid_rtt(sample)]
    return statistics.median(kept) if kept else None


def region_latency(peer_rtts: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Region -> median round trip (ms) over its peers' ``(region, rtt)``, rounded."""
    by_region: dict[str, list[float]] = {}
    for region, rtt in peer_rtts:
        if is_valid_rtt(rtt):
            by_region.setdefault(region, []).append(rtt)
    return {
        region: round(statistics.median(values), ROUND_TO_DIGITS)
        for region, values in sorted(by_region.items())
    }


def peer_rank(own_did: str, peer: str) -> int:
    """A stable number per (node, peer): the order in which a node prefers its peers."""
    digest = hashlib.blake2b(f"{own_did}\n{peer}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def select_peers(own_did: str, regions: Mapping[str, str], limit: int) -> list[str]:
    """At most ``limit`` peers of ``regions`` (peer -> region), one region after another
    (see the module docstring); deterministic for the same inputs."""
    per_region: dict[str, list[str]] = {}
    for peer, region in regions.items():
        if peer != own_did:
            per_region.setdefault(region, []).append(peer)
    queues = [
        deque(sorted(peers, key=lambda peer: (peer_rank(own_did, peer), peer)))
        for _, peers in sorted(per_region.items())
    ]
    chosen: list[str] = []
    while queues and len(chosen) < limit:
        for queue in queues:
            if len(chosen) < limit:
                chosen.append(queue.popleft())
        queues = [queue for queue in queues if queue]
    return chosen


@dataclass
class _Peer:
    region: str
    rank: int
    heard_at: float
    samples: deque[float]
    failures: int = 0


@dataclass
class LatencyBook:
    """What one node knows of its peers' round trips; see the module docstring."""

    own_did: str
    max_peers: int = 64
    samples: int = 3
    peer_ttl_s: float = 120.0
    _peers: dict[str, _Peer] = field(default_factory=dict)
    _tracked: list[str] | None = None
    _cursor: int = 0

    @property
    def max_known(self) -> int:
        return self.max_peers * MAX_KNOWN_FACTOR

    def heard(self, did: str, region: str, now: float) -> None:
        """``did`` advertised itself in ``region``."""
        if did == self.own_did:
            return
        peer = self._peers.get(did)
        if peer is not None:
            if peer.region != region:
                peer.region, self._tracked = region, None
                peer.samples.clear()
            peer.heard_at = now
            return
        rank = peer_rank(self.own_did, did)
        if len(self._peers) >= self.max_known and not self._evict_worse_than(rank):
            return
        self._peers[did] = _Peer(region, rank, now, deque(maxlen=self.samples))
        self._tracked = None

    def forget_silent(self, now: float) -> None:
        """Drop the peers not advertised for ``peer_ttl_s``."""
        silent = [did for did, peer in self._peers.items() if now - peer.heard_at > self.peer_ttl_s]
        for did in silent:
            del self._peers[did]
        if silent:
            self._tracked = None

    def tracked(self) -> list[str]:
        if self._tracked is None:
            regions = {did: peer.region for did, peer in self._peers.items()}
            self._tracked = select_peers(self.own_did, regions, self.max_peers)
        return self._tracked

    def next_round(self, count: int) -> list[str]:
        """The next ``count`` tracked peers to ping, cycling through them all."""
        tracked = self.tracked()
        if not tracked or count <= 0:
            return []
        picked = [tracked[(self._cursor + step) % len(tracked)] for step in range(count)]
        self._cursor = (self._cursor + count) % len(tracked)
        return list(dict.fromkeys(picked))

    def record(self, did: str, rtt_ms: float) -> None:
        peer = self._peers.get(did)
        if peer is not None and is_valid_rtt(rtt_ms):
            peer.samples.append(rtt_ms)
            peer.failures = 0

    def failed(self, did: str) -> None:
        peer = self._peers.get(did)
        if peer is None:
            return
        peer.failures += 1
        if peer.failures >= MAX_FAILURES:
            peer.samples.clear()

    def peer_rtt(self, did: str) -> float | None:
        peer = self._peers.get(did)
        return None if peer is None else smoothed_rtt(peer.samples)

    def latency_ms(self) -> dict[str, float]:
        """Region -> round trip in ms, over the tracked peers measured."""
        measured = []
        for did in self.tracked():
            rtt = self.peer_rtt(did)
            if rtt is not None:
                measured.append((self._peers[did].region, rtt))
        return region_latency(measured)

    def _evict_worse_than(self, rank: int) -> bool:
        """Make room for a peer of ``rank`` by dropping the worst-ranked one, if worse."""
        worst = max(self._peers, key=lambda did: self._peers[did].rank)
        if self._peers[worst].rank <= rank:
            return False
        del self._peers[worst]
        return True


@dataclass
class PingLimiter:
    """A token bucket for all pings together: ``rate`` a second, bursts of ``burst``."""

    rate: float = 50.0
    burst: float = 100.0
    _tokens: float | None = None
    _at: float = 0.0

    def allow(self, now: float) -> bool:
        tokens = self.burst if self._tokens is None else self._tokens
        tokens = min(self.burst, tokens + (now - self._at) * self.rate)
        self._at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


def ping_payload() -> dict[str, int]:
    return {"sent_ms": now_ms()}


def checked_ping(payload: Mapping[str, Any]) -> dict[str, int]:
    """The echo for a ping payload; MeshError ``bad_ping`` when it is not one."""
    sent = payload.get("sent_ms")
    if set(payload) != {"sent_ms"} or type(sent) is not int or not 0 <= sent < MAX_SENT_MS:
        raise MeshError('a ping carries only {"sent_ms": milliseconds}', code="bad_ping")
    return {"sent_ms": sent}


async def ping(actor: Actor, did: str, *, timeout: float) -> float:
    """One round trip to ``did`` in ms (raises MeshError when it does not answer)."""
    started = time.perf_counter()
    await actor.request(did, behaviours.PING, ping_payload(), timeout=timeout, once=True)
    return (time.perf_counter() - started) * 1000.0


# Probing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSettings:
    interval_s: float = 10.0
    peers_per_round: int = 3
    samples: int = 3
    max_peers: int = 64
    timeout_s: float = 2.0
    peer_ttl_s: float = 120.0


class LatencyProber:
    """A node's side of latency: answers pings, pings its peers, reports per region."""

    def __init__(
        self,
        *,
        actor: Actor,
        settings: ProbeSettings,
        on_new_region: Callable[[], Awaitable[None]],
        limiter: PingLimiter | None = None,
    ) -> None:
        self.actor = actor
        self.settings = settings
        self.on_new_region = on_new_region
        """Called after a round that measured a region not measured before."""
        self.limiter = limiter or PingLimiter()
        self.book = LatencyBook(
            own_did=actor.did,
            max_peers=settings.max_peers,
            samples=settings.samples,
            peer_ttl_s=settings.peer_ttl_s,
        )

    def latency_ms(self) -> dict[str, float]:
        return self.book.latency_ms()

    async def on_advertisement(self, inbound: Inbound) -> None:
        advert = parse_model(Advertisement, inbound.payload, what="advertisement")
        self.book.heard(inbound.sender, advert.region, time.monotonic())

    async def on_ping(self, inbound: Inbound) -> dict[str, int]:
        echo = checked_ping(inbound.payload)
        if not self.limiter.allow(time.monotonic()):
            raise MeshError("too many pings; try later", code="rate_limited", retryable=True)
        return echo

    async def run(self) -> None:
        """Probe forever, a round every ``interval_s``; nothing when ``peers_per_round`` is 0."""
        if self.settings.peers_per_round <= 0:
            return
        await asyncio.sleep(min(FIRST_ROUND_DELAY_S, self.settings.interval_s))
        while True:
            await self.probe_round()
            await asyncio.sleep(self.settings.interval_s)

    async def probe_round(self) -> None:
        self.book.forget_silent(time.monotonic())
        before = set(self.book.latency_ms())
        peers = self.book.next_round(self.settings.peers_per_round)
        answers = await asyncio.gather(
            *(ping(self.actor, did, timeout=self.settings.timeout_s) for did in peers),
            return_exceptions=True,
        )
        for did, answer in zip(peers, answers, strict=True):
            if isinstance(answer, float):
                self.book.record(did, answer)
            elif isinstance(answer, MeshError):
                log.debug("ping to %s: %s", did, answer.code)
                self.book.failed(did)
            elif isinstance(answer, BaseException):
                raise answer
        if set(self.book.latency_ms()) - before:
            await self.on_new_region()
