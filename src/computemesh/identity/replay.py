"""A bounded memory of recently seen envelopes, for refusing replays.

Each accepted envelope is remembered by ``(sender, nonce)`` until it expires; after that
the envelope verifier refuses it as expired, so the entry is no longer needed and is
forgotten.

The cache never holds more than ``capacity`` entries. When it is full of live entries it
evicts those expiring soonest. An evicted envelope could be accepted again until its own
expiry, so the guarantee holds only while ``capacity`` exceeds the number of envelopes
accepted within one maximum lifetime (the verifier's ``max_ttl_s`` plus clock skew); the
verifier's lifetime cap is what bounds that window, and evicting the soonest-expiring
entries keeps any such window as short as possible. Size ``capacity`` for the peak message
rate times that lifetime.

Every operation costs O(log n) (a heap ordered by expiry plus a dict for lookup). The cache
is not thread-safe; use it from one thread or event loop.
"""

from __future__ import annotations

import heapq

DEFAULT_REPLAY_CAPACITY = 100_000


class ReplayCache:
    """Remembers ``(sender, nonce)`` pairs until their envelope expires; bounded in size."""

    def __init__(self, capacity: int = DEFAULT_REPLAY_CAPACITY) -> None:
        """Raises ``ValueError`` unless ``capacity`` is a positive integer."""
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError("capacity must be a positive integer")
        self._capacity = capacity
        self._expiry_by_key: dict[tuple[str, str], int] = {}
        self._by_expiry: list[tuple[int, str, str]] = []

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._expiry_by_key)

    def check_and_remember(self, sender: str, nonce: str, expires_at_ms: int, now_ms: int) -> bool:
        """True if ``(sender, nonce)`` is new (and now remembered); False if it is a replay.

        Entries whose expiry is at or before ``now_ms`` are forgotten first. An envelope
        already expired at ``now_ms`` is not remembered, since the verifier refuses it before
        asking. When the cache is full, the entries expiring soonest make room.
        """
        self._forget_expired(now_ms)
        key = (sender, nonce)
        if key in self._expiry_by_key:
            return False
        if expires_at_ms <= now_ms:
            return True
        while len(self._expiry_by_key) >= self._capacity:
            self._evict_soonest()
        self._expiry_by_key[key] = expires_at_ms
        heapq.heappush(self._by_expiry, (expires_at_ms, sender, nonce))
        return True

    def _forget_expired(self, now_ms: int) -> None:
        while self._by_expiry and self._by_expiry[0][0] <= now_ms:
            self._evict_soonest()

    def _evict_soonest(self) -> None:
        _, sender, nonce = heapq.heappop(self._by_expiry)
        del self._expiry_by_key[(sender, nonce)]
