"""Failure detection from heartbeats: each node is alive, suspect or dead.

Pure bookkeeping over the times a node was last heard from (any heartbeat or
advertisement); the caller supplies the clock, so it is tested without waiting.

- ``heard(did, now)``: the node is alive again, whatever it was.
- ``sweep(now)``: a node silent for more than ``suspect_after_s`` becomes suspect, for more
  than ``dead_after_s`` dead; returns the transitions, each once.
- A dead node stays listed (``states``) until ``forget``; hearing from it revives it.
- Uptime: from a node's first sign of life, each second is *up* while the node was heard
  within ``suspect_after_s``, *down* while it was silent longer (suspect or dead), and
  counts no more once it was silent for ``max_outage_s`` (a node gone for the night loses
  one outage's worth, a node that flaps loses every gap). ``take_uptime(now)`` returns what
  accrued since the last call and starts again; it depends only on the times the node was
  heard, never on how often ``sweep`` runs.

With nodes beating every second, the defaults declare a silent node dead within 5 s of its
last heartbeat (plus one sweep interval).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class NodeState(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass(frozen=True)
class LivenessBounds:
    """Silence (seconds since last heard) after which a node is suspect, then dead."""

    suspect_after_s: float = 2.5
    dead_after_s: float = 5.0
    max_outage_s: float = 3600.0
    """Silence beyond this no longer counts against a node's uptime."""

    def __post_init__(self) -> None:
        if not 0 < self.suspect_after_s < self.dead_after_s:
            raise ValueError("liveness bounds need 0 < suspect_after_s < dead_after_s")
        if self.max_outage_s < self.dead_after_s:
            raise ValueError("liveness bounds need max_outage_s >= dead_after_s")


class Uptime(NamedTuple):
    """Seconds a node was seen up and down over some span."""

    up_s: float
    down_s: float


@dataclass(frozen=True)
class Transition:
    did: str
    before: NodeState | None
    after: NodeState


class LivenessTracker:
    """Per-node state from last-heard times; see the module docstring for the contract."""

    def __init__(self, bounds: LivenessBounds | None = None) -> None:
        self.bounds = bounds or LivenessBounds()
        self._last_heard: dict[str, float] = {}
        self._states: dict[str, NodeState] = {}
        self._accounted_to: dict[str, float] = {}
        self._uptime: dict[str, Uptime] = {}

    def heard(self, did: str, now: float) -> Transition | None:
        """Record a sign of life; the transition when the node was not alive before."""
        previous = self._states.get(did)
        self._account(did, now)
        self._last_heard[did] = max(now, self._last_heard.get(did, now))
        self._states[did] = NodeState.ALIVE
        if previous is NodeState.ALIVE:
            return None
        return Transition(did, previous, NodeState.ALIVE)

    def sweep(self, now: float) -> list[Transition]:
        """Move silent nodes to suspect or dead; the changes, in DID order."""
        changes = []
        for did in sorted(self._states):
            self._account(did, now)
            before = self._states[did]
            after = self.state_for_silence(now - self._last_heard[did])
            if before is NodeState.DEAD or after is before:
                continue
            self._states[did] = after
            changes.append(Transition(did, before, after))
        return changes

    def state_for_silence(self, silent_s: float) -> NodeState:
        if silent_s > self.bounds.dead_after_s:
            return NodeState.DEAD
        if silent_s > self.bounds.suspect_after_s:
            return NodeState.SUSPECT
        return NodeState.ALIVE

    def state(self, did: str) -> NodeState | None:
        return self._states.get(did)

    def states(self) -> dict[str, NodeState]:
        return dict(self._states)

    def forget(self, did: str) -> None:
        self._states.pop(did, None)
        self._last_heard.pop(did, None)
        self._accounted_to.pop(did, None)
        self._uptime.pop(did, None)

    def take_uptime(self, now: float) -> dict[str, Uptime]:
        """Up and down seconds of each node since the last call (those with any)."""
        for did in self._states:
            self._account(did, now)
        taken = {did: span for did, span in self._uptime.items() if span.up_s or span.down_s}
        self._uptime.clear()
        return taken

    def _account(self, did: str, now: float) -> None:
        """Add the span from the last accounted time to ``now`` to the node's uptime."""
        start = self._accounted_to.get(did)
        last = self._last_heard.get(did)
        if start is None or last is None:
            self._accounted_to[did] = now
            return
        if now <= start:
            return
        suspect_at = last + self.bounds.suspect_after_s
        up = _overlap(start, now, last, suspect_at)
        down = _overlap(start, now, suspect_at, last + self.bounds.max_outage_s)
        before = self._uptime.get(did, Uptime(0.0, 0.0))
        self._uptime[did] = Uptime(before.up_s + up, before.down_s + down)
        self._accounted_to[did] = now


def _overlap(start: float, end: float, low: float, high: float) -> float:
    return max(0.0, min(end, high) - max(start, low))
