"""Collecting signed bids for one bid request over a bounded window."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from computemesh.models.market import Bid, BidRefusal


@dataclass
class BidCollection:
    """Bids and refusals that arrived for one request; ``done`` is set on early close."""

    request_id: str
    expected: int | None = None
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

    def _maybe_close(self) -> None:
        if self.expected is not None and len(self.bids) + len(self.refusals) >= self.expected:
            self.done.set()

    async def wait(self, window_s: float) -> None:
        """Until the window closes, or earlier once every expected node has answered."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), timeout=window_s)
