"""The orchestrator's picture of the mesh: indexed advertisements, liveness, promised capacity.

Fed from the signed advertisement and heartbeat streams (the caller verified them and
supplies the clock), read by placement. Contract:

- An advertisement is indexed unless it is impossible (dropped and logged, see
  ``matching.plausibility``); any advertisement or heartbeat counts as a sign of life.
- A heartbeat refreshes free capacity; from a node not indexed it returns False, and the
  caller asks that node for its advertisement.
- Capacity promised in a contract is reserved on the node until the node's own next
  report (heartbeat or advertisement received after the contract) or the result arrives,
  whichever comes first: from then on the node's report counts it.
- ``sweep`` moves silent nodes to suspect, then dead; a dead node leaves the index and
  every ``on_node_dead`` callback is called with its DID.
- ``capacity_changed`` is set whenever a node appears or reports more free capacity than
  before, or a reservation ends; whoever waits for capacity clears it.
- Round trips the consumer measured to a node (``measured_rtt``) count as fresh for
  ``rtt_ttl_s`` (then ``rtt_unknown`` names the node again). With the consumer's
  ``region`` known, each one stands in the index as the node's latency to that region
  (what ``preferences.near`` names), over what the node itself reported for it: it is
  the consumer's own measurement.
- With ``reputation_of`` (the consumer's own record of each provider), that reputation
  stands in the index for the advertised one: read when a node is indexed and again at
  ``reputation_changed``; it decides ``min_reputation`` and the reputation score.
- Each node's uptime (``liveness``: seconds up and down since it was first heard) goes to
  every ``on_uptime`` callback as ``(did, up_s, down_s)`` at the first ``sweep`` at least
  ``uptime_flush_s`` after the last, and at ``flush_uptime``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable

from computemesh.identity.did import abbreviate_did
from computemesh.matching import NodeIndex
from computemesh.matching.index import resource_amounts
from computemesh.matching.plausibility import MAX_LATENCY_MS
from computemesh.matching.requirement import Amounts
from computemesh.models.job import Resources
from computemesh.models.market import Advertisement, Heartbeat
from computemesh.orchestrator.liveness import (
    LivenessBounds,
    LivenessTracker,
    NodeState,
    Transition,
    Uptime,
)

log = logging.getLogger(__name__)


class MeshView:
    """See the module docstring."""

    def __init__(
        self,
        bounds: LivenessBounds | None = None,
        *,
        region: str | None = None,
        rtt_ttl_s: float = 300.0,
        reputation_of: Callable[[str], float] | None = None,
        uptime_flush_s: float = 60.0,
    ) -> None:
        self.index = NodeIndex()
        self.reputation_of = reputation_of
        """The consumer's own view of a provider's reputation (0..1), when it keeps one."""
        self.region = region
        """The consumer's own region, when known."""
        self.rtt_ttl_s = rtt_ttl_s
        self._rtt: dict[str, tuple[float, float]] = {}
        """DID -> (round trip in ms the consumer measured, when)."""
        self.liveness = LivenessTracker(bounds)
        self.on_node_dead: list[Callable[[str], None]] = []
        self.on_uptime: list[Callable[[str, float, float], None]] = []
        self.uptime_flush_s = uptime_flush_s
        self._uptime_flushed_at: float | None = None
        self.capacity_changed = asyncio.Event()
        self._promised: dict[str, tuple[str, float]] = {}
        """contract id -> (provider, when the contract was countersigned)."""

    # Streams ------------------------------------------------------------------------------

    def advertised(self, did: str, advert: Advertisement, now: float) -> list[str]:
        """Index ``advert``; the problems that refused it (empty when indexed)."""
        before = self.index.free_of(did) if did in self.index else None
        problems = self.index.upsert(did, advert, seen_at=now)
        if problems:
            self._forget_promises(did)
            return problems
        self._heard(did, now)
        self._settle_promises(did, now)
        self._apply_rtt(did)
        if before is None:
            self.reputation_changed(did)
        if before is None or _grew(before, self.index.free_of(did)):
            self.capacity_changed.set()
        return []

    def heartbeat(self, did: str, beat: Heartbeat, now: float) -> bool:
        """Refresh ``did``'s free capacity; False when it is not indexed (or the beat is bad)."""
        if did not in self.index:
            return False
        before = self.index.free_of(did)
        if not self.index.heartbeat(did, beat.free, seen_at=now):
            return False
        self._heard(did, now)
        self._settle_promises(did, now)
        if _grew(before, self.index.free_of(did)):
            self.capacity_changed.set()
        return True

    def sweep(self, now: float) -> list[Transition]:
        """Apply silence: suspects logged, the dead dropped from the index and announced."""
        changes = self.liveness.sweep(now)
        for change in changes:
            if change.after is NodeState.DEAD:
                log.warning("node %s is dead: no heartbeat", abbreviate_did(change.did))
                self.index.remove(change.did)
                self._forget_promises(change.did)
                self._rtt.pop(change.did, None)
                for callback in self.on_node_dead:
                    callback(change.did)
            else:
                log.info("node %s is %s", abbreviate_did(change.did), change.after)
        if self._uptime_flushed_at is None:
            self._uptime_flushed_at = now
        elif now - self._uptime_flushed_at >= self.uptime_flush_s:
            self.flush_uptime(now)
        return changes

    def flush_uptime(self, now: float) -> dict[str, Uptime]:
        """Hand each node's uptime accrued until ``now`` to the ``on_uptime`` callbacks."""
        self._uptime_flushed_at = now
        taken = self.liveness.take_uptime(now)
        for did, span in taken.items():
            for callback in self.on_uptime:
                callback(did, span.up_s, span.down_s)
        return taken

    def node_states(self) -> dict[str, NodeState]:
        return self.liveness.states()

    def suspects(self) -> frozenset[str]:
        return frozenset(
            did for did, state in self.liveness.states().items() if state is NodeState.SUSPECT
        )

    # Round trips from the consumer --------------------------------------------------------

    def measured_rtt(self, did: str, rtt_ms: float, now: float) -> None:
        """Keep a round trip the consumer measured to ``did`` (see the module docstring)."""
        if not (math.isfinite(rtt_ms) and 0 <= rtt_ms <= MAX_LATENCY_MS):
            return
        self._rtt[did] = (rtt_ms, now)
        self._apply_rtt(did)

    def rtt_of(self, did: str, now: float) -> float | None:
        """The consumer's fresh round trip to ``did`` in ms, None when unknown or stale."""
        measured = self._rtt.get(did)
        if measured is None or now - measured[1] > self.rtt_ttl_s:
            return None
        return measured[0]

    def rtt_unknown(self, dids: Iterable[str], now: float) -> list[str]:
        """Those of ``dids`` without a fresh round trip from the consumer."""
        return [did for did in dids if self.rtt_of(did, now) is None]

    def _apply_rtt(self, did: str) -> None:
        row = self.index.row_of(did)
        measured = self._rtt.get(did)
        if self.region is None or row is None or measured is None:
            return
        reports = {**self.index.advertisement(did).latency_ms, self.region: measured[0]}
        self.index.latency.set_row(
            row, {self.index.regions.code(region): rtt for region, rtt in reports.items()}
        )
        self.index.version += 1  # region estimates are cached per version

    # Reputation ---------------------------------------------------------------------------

    def reputation_changed(self, did: str) -> None:
        """Read ``did``'s reputation from ``reputation_of`` into the index again."""
        if self.reputation_of is not None:
            self.index.set_reputation(did, self.reputation_of(did))

    # Promised capacity --------------------------------------------------------------------

    def promise(self, contract_id: str, did: str, need: Resources, now: float) -> None:
        """Hold ``need`` on ``did`` for a countersigned contract (see the module docstring)."""
        if self.index.reserve(contract_id, did, need):
            self._promised[contract_id] = (did, now)
        elif did in self.index:
            # The index already showed less than the node accepted: count it all the same.
            self.index.reserve(contract_id, did, _zero_beyond(self.index.free_of(did), need))
            self._promised[contract_id] = (did, now)

    def release(self, contract_id: str) -> None:
        if self._promised.pop(contract_id, None) is not None:
            self.index.release(contract_id)
            self.capacity_changed.set()

    def promised(self) -> dict[str, str]:
        """Contract id -> provider, for every reservation held."""
        return {contract_id: did for contract_id, (did, _) in self._promised.items()}

    # Internals ----------------------------------------------------------------------------

    def _heard(self, did: str, now: float) -> None:
        change = self.liveness.heard(did, now)
        if change is not None and change.before is not None:
            log.info("node %s is alive again", abbreviate_did(did))

    def _settle_promises(self, did: str, now: float) -> None:
        for contract_id, (provider, since) in list(self._promised.items()):
            if provider == did and since < now:
                del self._promised[contract_id]
                self.index.release(contract_id)

    def _forget_promises(self, did: str) -> None:
        self._promised = {key: held for key, held in self._promised.items() if held[0] != did}


def _grew(before: Amounts, after: Amounts) -> bool:
    return any(a > b for a, b in zip(after, before, strict=True))


def _zero_beyond(free: Amounts, need: Resources) -> Amounts:
    """``need`` capped at what is free, so the reservation fits and leaves nothing of it."""
    cpu, memory, disk, gpu = (min(a, f) for a, f in zip(resource_amounts(need), free, strict=True))
    return (cpu, memory, disk, gpu)
