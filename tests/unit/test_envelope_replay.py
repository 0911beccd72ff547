"""Replay protection: the verifier's ``replayed`` check and the bounded ReplayCache."""

from __future__ import annotations

from typing import Any

import pytest

from computemesh.identity import EnvelopeVerifier, ReplayCache
from computemesh.identity.canonical import canonical_json
from computemesh.models.errors import EnvelopeRejected
from tests.unit.test_envelope import (
    ALICE,
    BOB,
    MALLORY,
    NOW_MS,
    fixed_clock,
    rejection,
    resigned,
    sealed,
    wire_object,
)

# The verifier -------------------------------------------------------------------------------


def test_replayed_when_the_same_bytes_arrive_twice() -> None:
    verifier = fixed_clock()
    data = sealed()
    assert verifier.open(data, accept_recipients={BOB.did}).sender == ALICE.did
    with pytest.raises(EnvelopeRejected, match="already accepted") as caught:
        verifier.open(data, accept_recipients={BOB.did})
    assert caught.value.code == "replayed"


def test_replay_is_per_sender_and_nonce() -> None:
    verifier = fixed_clock()
    first = wire_object(sealed(ALICE))
    second = wire_object(sealed(MALLORY))
    second["nonce"] = first["nonce"]
    verifier.open(canonical_json(first), accept_recipients={BOB.did})
    assert verifier.open(resigned(second, MALLORY), accept_recipients={BOB.did})


def test_a_forgery_does_not_burn_the_genuine_nonce() -> None:
    verifier = fixed_clock()
    genuine = sealed()
    forged = wire_object(genuine)
    forged["payload"] = {"price": 0}
    assert rejection(canonical_json(forged), verifier) == "bad_signature"
    assert verifier.open(genuine, accept_recipients={BOB.did}).payload["price"] == 3


def test_a_misaddressed_envelope_is_not_remembered() -> None:
    verifier = fixed_clock()
    data = sealed()
    assert rejection(data, verifier, accept_recipients={MALLORY.did}) == "recipient_mismatch"
    assert verifier.open(data, accept_recipients={BOB.did}).recipient == BOB.did


def test_replay_is_accepted_again_only_after_expiry_where_it_is_refused_anyway() -> None:
    cache = ReplayCache()
    data = sealed()
    EnvelopeVerifier(replay_cache=cache, clock=lambda: NOW_MS / 1000).open(
        data, accept_recipients={BOB.did}
    )
    later = EnvelopeVerifier(replay_cache=cache, clock=lambda: (NOW_MS + 31_000) / 1000)
    assert rejection(data, later) == "expired"


# ReplayCache --------------------------------------------------------------------------------


def test_replay_cache_detects_a_repeat_until_expiry() -> None:
    cache = ReplayCache()
    assert cache.check_and_remember("a", "n1", expires_at_ms=200, now_ms=100)
    assert not cache.check_and_remember("a", "n1", expires_at_ms=200, now_ms=150)
    assert cache.check_and_remember("b", "n1", expires_at_ms=200, now_ms=150)
    assert cache.check_and_remember("a", "n1", expires_at_ms=300, now_ms=200)


def test_replay_cache_forgets_expired_entries() -> None:
    cache = ReplayCache()
    for index in range(10):
        cache.check_and_remember("a", f"n{index}", expires_at_ms=100 + index, now_ms=0)
    assert len(cache) == 10
    cache.check_and_remember("a", "fresh", expires_at_ms=1000, now_ms=105)
    assert len(cache) == 5


def test_replay_cache_does_not_store_already_expired_envelopes() -> None:
    cache = ReplayCache()
    assert cache.check_and_remember("a", "n", expires_at_ms=100, now_ms=100)
    assert len(cache) == 0


def test_replay_cache_never_exceeds_its_capacity() -> None:
    cache = ReplayCache(capacity=10)
    for index in range(1000):
        assert cache.check_and_remember("a", f"n{index}", expires_at_ms=10_000 + index, now_ms=0)
        assert len(cache) <= 10
    assert len(cache) == 10
    assert cache.capacity == 10


def test_replay_cache_evicts_the_entries_expiring_soonest() -> None:
    cache = ReplayCache(capacity=3)
    cache.check_and_remember("a", "late", expires_at_ms=900, now_ms=0)
    cache.check_and_remember("a", "soon", expires_at_ms=100, now_ms=0)
    cache.check_and_remember("a", "middle", expires_at_ms=500, now_ms=0)
    cache.check_and_remember("a", "newest", expires_at_ms=700, now_ms=0)
    assert len(cache) == 3
    assert not cache.check_and_remember("a", "late", expires_at_ms=900, now_ms=0)
    assert not cache.check_and_remember("a", "middle", expires_at_ms=500, now_ms=0)
    assert not cache.check_and_remember("a", "newest", expires_at_ms=700, now_ms=0)
    assert cache.check_and_remember("a", "soon", expires_at_ms=100, now_ms=0)


def test_replay_cache_prefers_dropping_expired_entries_over_live_ones() -> None:
    cache = ReplayCache(capacity=2)
    cache.check_and_remember("a", "old", expires_at_ms=50, now_ms=0)
    cache.check_and_remember("a", "live", expires_at_ms=500, now_ms=0)
    cache.check_and_remember("a", "new", expires_at_ms=600, now_ms=60)
    assert not cache.check_and_remember("a", "live", expires_at_ms=500, now_ms=60)
    assert not cache.check_and_remember("a", "new", expires_at_ms=600, now_ms=60)


def test_replay_cache_stays_bounded_under_a_verifier_flood() -> None:
    cache = ReplayCache(capacity=50)
    verifier = EnvelopeVerifier(replay_cache=cache, clock=lambda: NOW_MS / 1000)
    for _ in range(200):
        verifier.open(sealed(), accept_recipients={BOB.did})
    assert len(cache) == 50


@pytest.mark.parametrize("capacity", [0, -1, True, 1.5])
def test_replay_cache_requires_a_positive_capacity(capacity: Any) -> None:
    with pytest.raises(ValueError):
        ReplayCache(capacity=capacity)
