"""Failure detection from heartbeats: each node is alive, suspect or dead.

Pure bookkeeping over the times a node was last heard from (any heartbeat or
advertisement); the caller supplies the clock, so it is tested without waiting.

- ``heard(did, now)``: the node is alive again, whatever it was.
- ``sweep(now)``: a node silent for more than ``suspect_after_s`` becomes suspect, for more
  than ``dead_after_s`` dead; returns the transitions, each once.
- A dead node stays listed (``states``) until ``forget``; hearing from it revives it.

With nodes beating every second, the defaults declare a silent node dead within 5 s of its
last heartbeat (plus one sweep interval).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class NodeState(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass(frozen=True)
class LivenessBounds:
    """Silence (seconds since last heard) after which a node is suspect, then dead."""

    suspect_after_s: float = 2.5
    dead_after_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.suspect_after_s < self.dead_after_s:
            raise ValueError("liveness bounds need 0 < suspect_after_s < dead_after_s")


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

    def heard(self, did: str, now: float) -> Transition | None:
        """Record a sign of life; the transition when the node was not alive before."""
        previous = self._states.get(did)
        self._last_heard[did] = max(now, self._last_heard.get(did, now))
        self._states[did] = NodeState.ALIVE
        if previous is NodeState.ALIVE:
            return None
        return Transition(did, previous, NodeState.ALIVE)

    def sweep(self, now: float) -> list[Transition]:
        """Move silent nodes to suspect or dead; the changes, in DID order."""
        changes = []
        for did in sorted(self._states):
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
