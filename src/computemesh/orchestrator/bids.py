"""Collecting signed bids for one bid request over a bounded window."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from computemesh.models.market import Bid, BidRefusal


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
