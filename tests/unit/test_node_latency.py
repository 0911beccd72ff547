"""Latency bookkeeping on a node: which peers it tracks, how round trips become per-region
figures, and which pings it answers."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from computemesh.models.errors import MeshError
from computemesh.node.latency import (
    MAX_FAILURES,
    MAX_RTT_MS,
    LatencyBook,
    PingLimiter,
    checked_ping,
    region_latency,
    select_peers,
    smoothed_rtt,
)

REGIONS = st.sampled_from(["eu-west", "us-east", "ap-south", "local"])
RTTS = st.floats(min_value=0, max_value=MAX_RTT_MS, allow_nan=False)


def peers(count: int, region: str) -> dict[str, str]:
    return {f"did:key:z{region}{index:03d}": region for index in range(count)}


@given(st.lists(st.tuples(REGIONS, RTTS), max_size=40))
def test_each_region_reports_the_median_of_its_peers(measured: list[tuple[str, float]]) -> None:
    figures = region_latency(measured)
    assert set(figures) == {region for region, _ in measured}
    for region, figure in figures.items():
        values = [rtt for where, rtt in measured if where == region]
        assert figure == round(statistics.median(values), 2)
        assert min(values) - 0.01 <= figure <= max(values) + 0.01


def test_impossible_round_trips_are_ignored() -> None:
    measured = [("eu-west", float("nan")), ("eu-west", -1.0), ("us-east", MAX_RTT_MS * 2)]
    assert region_latency([*measured, ("eu-west", 3.0)]) == {"eu-west": 3.0}
    assert smoothed_rtt([float("inf"), 4.0, 2.0, 9.0]) == 4.0
    assert smoothed_rtt([]) is None


@given(
    st.dictionaries(st.text("abcdef", min_size=1, max_size=6), REGIONS, max_size=60),
    st.integers(min_value=0, max_value=70),
)
def test_peer_choice_is_bounded_deterministic_and_covers_regions_first(
    known: dict[str, str], limit: int
) -> None:
    chosen = select_peers("me", known, limit)
    assert len(chosen) == min(limit, len(known)) == len(set(chosen))
    assert chosen == select_peers("me", dict(reversed(list(known.items()))), limit)
    regions_known = set(known.values())
    if limit >= len(regions_known):
        assert {known[peer] for peer in chosen} == regions_known


def test_own_did_is_never_a_peer() -> None:
    book = LatencyBook(own_did="me")
    book.heard("me", "eu-west", 0.0)
    assert book.tracked() == []


def test_book_tracks_at_most_max_peers_and_its_pool_is_bounded() -> None:
    book = LatencyBook(own_did="me", max_peers=4)
    for did, region in {**peers(100, "eu-west"), **peers(3, "us-east")}.items():
        book.heard(did, region, 0.0)
    tracked = book.tracked()
    assert len(tracked) == 4
    assert len(book._peers) <= book.max_known
    same = LatencyBook(own_did="me", max_peers=4)
    for did, region in reversed(list({**peers(100, "eu-west"), **peers(3, "us-east")}.items())):
        same.heard(did, region, 0.0)
    assert same.tracked() == tracked


def test_rounds_cycle_through_the_tracked_peers() -> None:
    book = LatencyBook(own_did="me", max_peers=5)
    for did, region in peers(5, "eu-west").items():
        book.heard(did, region, 0.0)
    seen = [did for _ in range(5) for did in book.next_round(2)]
    assert set(seen) == set(book.tracked())
    assert all(seen.count(did) == 2 for did in book.tracked())


def test_book_reports_per_region_from_recent_samples_only() -> None:
    book = LatencyBook(own_did="me", samples=3)
    book.heard("a", "eu-west", 0.0)
    book.heard("b", "eu-west", 0.0)
    book.heard("c", "us-east", 0.0)
    for rtt in (50.0, 1.0, 2.0, 3.0):  # the first falls out of the window of three
        book.record("a", rtt)
    book.record("b", 10.0)
    book.record("c", 80.0)
    book.record("stranger", 1.0)
    assert book.peer_rtt("a") == 2.0
    assert book.latency_ms() == {"eu-west": 6.0, "us-east": 80.0}


def test_failures_clear_a_peer_and_silence_forgets_it() -> None:
    book = LatencyBook(own_did="me", peer_ttl_s=60.0)
    book.heard("a", "eu-west", 0.0)
    book.heard("b", "us-east", 30.0)
    book.record("a", 5.0)
    book.record("b", 9.0)
    for _ in range(MAX_FAILURES):
        book.failed("a")
    assert book.latency_ms() == {"us-east": 9.0}
    book.forget_silent(80.0)
    assert book.tracked() == ["b"]


def test_a_peer_that_moves_region_starts_afresh() -> None:
    book = LatencyBook(own_did="me")
    book.heard("a", "eu-west", 0.0)
    book.record("a", 5.0)
    book.heard("a", "us-east", 1.0)
    assert book.latency_ms() == {}


def test_ping_payload_is_checked() -> None:
    assert checked_ping({"sent_ms": 12}) == {"sent_ms": 12}
    for bad in ({}, {"sent_ms": "12"}, {"sent_ms": -1}, {"sent_ms": True}, {"sent_ms": 1, "x": 2}):
        with pytest.raises(MeshError) as caught:
            checked_ping(bad)
        assert caught.value.code == "bad_ping"


def test_pings_are_rate_limited_for_all_senders_together() -> None:
    limiter = PingLimiter(rate=10.0, burst=5.0)
    assert [limiter.allow(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow(0.05) is False
    assert limiter.allow(0.2) is True
