"""The durable placement queue: order, positions, and surviving a reopen."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from computemesh.store import PlacementQueue, open_database, sqlite_url


def queue_in_memory() -> PlacementQueue:
    return PlacementQueue(open_database("sqlite://"))


@settings(max_examples=40, deadline=None)
@given(priorities=st.lists(st.integers(min_value=-5, max_value=5), max_size=12))
def test_order_is_priority_then_arrival_and_positions_agree(priorities: list[int]) -> None:
    queue = queue_in_memory()
    for number, priority in enumerate(priorities):
        queue.enqueue(f"{number:032x}", priority=priority, reason="short")
    ordered = queue.ordered()
    keys = [(-entry.priority, entry.enqueued_at, entry.job_id) for entry in ordered]
    assert keys == sorted(keys)
    assert len(ordered) == len(priorities)
    for position, entry in enumerate(ordered, start=1):
        assert queue.position(entry.job_id) == position


def test_requeueing_keeps_the_place_and_updates_the_reason() -> None:
    queue = queue_in_memory()
    first = queue.enqueue("a" * 32, priority=0, reason="memory short")
    queue.enqueue("b" * 32, priority=0, reason="cpu short")
    again = queue.enqueue("a" * 32, priority=9, reason="still short")
    assert again.enqueued_at == first.enqueued_at and again.priority == 0
    assert again.reason == "still short"
    assert [entry.job_id for entry in queue.ordered()] == ["a" * 32, "b" * 32]


def test_removed_jobs_leave_no_gap_and_unknown_jobs_have_no_position() -> None:
    queue = queue_in_memory()
    for name in "abc":
        queue.enqueue(name * 32, priority=0, reason="")
    assert queue.remove("a" * 32) is True
    assert queue.remove("a" * 32) is False
    assert queue.position("b" * 32) == 1
    assert queue.position("a" * 32) is None


def test_the_queue_survives_reopening_the_store(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "consumer.db")
    PlacementQueue(open_database(url)).enqueue("e" * 32, priority=3, reason="gpu short")
    (entry,) = PlacementQueue(open_database(url)).ordered()
    assert (entry.job_id, entry.priority, entry.reason) == ("e" * 32, 3, "gpu short")
