"""Failure detection: alive, suspect, dead from silence; and the mesh view it drives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from computemesh.identity import Identity
from computemesh.models.job import Resources
from computemesh.models.market import Advertisement, Capacity, Hardware, Heartbeat
from computemesh.orchestrator.liveness import LivenessBounds, LivenessTracker, NodeState
from computemesh.orchestrator.mesh_view import MeshView

BOUNDS = LivenessBounds(suspect_after_s=2.0, dead_after_s=5.0)
HARDWARE = Hardware(cpu_count=4, architecture="x86_64", memory_mb=8192, disk_mb=10_000)


def advert(*, cpu: float = 4.0, memory_mb: int = 8192) -> Advertisement:
    return Advertisement(
        hardware=HARDWARE,
        region="eu-west",
        executors=["process"],
        price_per_cpu_hour=0.1,
        sandboxed=True,
        free=Capacity(cpu=cpu, memory_mb=memory_mb, disk_mb=10_000, gpu_count=0),
        version="test",
    )


def beat(seq: int, *, cpu: float = 4.0, memory_mb: int = 8192, disk_mb: int = 10_000) -> Heartbeat:
    free = Capacity(cpu=cpu, memory_mb=memory_mb, disk_mb=disk_mb, gpu_count=0)
    return Heartbeat(seq=seq, free=free, running=0)


def test_silence_moves_a_node_to_suspect_then_dead_and_a_beat_revives_it() -> None:
    tracker = LivenessTracker(BOUNDS)
    tracker.heard("a", 0.0)
    assert tracker.sweep(1.9) == []
    (suspect,) = tracker.sweep(2.1)
    assert (suspect.before, suspect.after) == (NodeState.ALIVE, NodeState.SUSPECT)
    (dead,) = tracker.sweep(5.1)
    assert (dead.before, dead.after) == (NodeState.SUSPECT, NodeState.DEAD)
    assert tracker.sweep(60.0) == []  # dead is reported once
    revived = tracker.heard("a", 61.0)
    assert revived is not None and revived.before is NodeState.DEAD
    assert tracker.state("a") is NodeState.ALIVE


def test_bounds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="suspect_after_s < dead_after_s"):
        LivenessBounds(suspect_after_s=5.0, dead_after_s=5.0)


@given(
    beats=st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=20),
    sweeps=st.lists(st.floats(min_value=0, max_value=120, allow_nan=False), max_size=20),
)
def test_state_always_follows_the_silence_since_the_last_beat(
    beats: list[float], sweeps: list[float]
) -> None:
    tracker = LivenessTracker(BOUNDS)
    events = sorted([(t, "beat") for t in beats] + [(t, "sweep") for t in sweeps])
    last: float | None = None
    dead_reported = 0
    for now, kind in events:
        if kind == "beat":
            tracker.heard("n", now)
            last = now
            continue
        changes = tracker.sweep(now)
        dead_reported += sum(change.after is NodeState.DEAD for change in changes)
        if last is None:
            assert tracker.state("n") is None
            continue
        expected = tracker.state_for_silence(now - last)
        assert tracker.state("n") is expected
        for change in changes:
            assert change.before is not change.after
    assert dead_reported <= len(beats)


def test_view_indexes_adverts_drops_impossible_ones_and_asks_unknown_beaters() -> None:
    view = MeshView(BOUNDS)
    did, liar = Identity.generate().did, Identity.generate().did
    assert view.advertised(did, advert(), 0.0) == []
    problems = view.advertised(liar, advert(cpu=64.0), 0.0)
    assert problems and "exceeds the total" in problems[0]
    assert view.index.providers() == [did]
    assert view.heartbeat(liar, beat(1), 0.5) is False
    assert view.heartbeat(did, beat(1, cpu=3.0), 0.5) is True
    assert view.index.free_of(did)[0] == 3.0


def test_view_drops_dead_nodes_and_tells_the_callbacks() -> None:
    view = MeshView(BOUNDS)
    dead: list[str] = []
    view.on_node_dead.append(dead.append)
    quiet, chatty = Identity.generate().did, Identity.generate().did
    view.advertised(quiet, advert(), 0.0)
    view.advertised(chatty, advert(), 0.0)
    for second in range(1, 7):
        view.heartbeat(chatty, beat(second), float(second))
        view.sweep(float(second) + 0.5)
    assert dead == [quiet]
    assert view.index.providers() == [chatty]
    assert view.node_states() == {quiet: NodeState.DEAD, chatty: NodeState.ALIVE}


def test_promised_capacity_is_held_until_the_node_reports_again() -> None:
    view = MeshView(BOUNDS)
    did = Identity.generate().did
    view.advertised(did, advert(), 0.0)
    view.capacity_changed.clear()
    view.promise("c" * 32, did, Resources(cpu=3.0, memory_mb=1024), 1.0)
    assert view.index.free_of(did)[0] == 1.0
    counted = beat(1, cpu=1.0, memory_mb=7168, disk_mb=9744)  # the node counts it itself
    assert view.heartbeat(did, counted, 2.0)
    assert view.index.free_of(did)[0] == 1.0
    assert view.promised() == {}
    assert not view.capacity_changed.is_set()
    view.heartbeat(did, beat(2, cpu=4.0), 3.0)  # the allocation finished
    assert view.capacity_changed.is_set()


def test_a_result_ends_a_promise_and_signals_capacity() -> None:
    view = MeshView(BOUNDS)
    did = Identity.generate().did
    view.advertised(did, advert(), 0.0)
    view.promise("d" * 32, did, Resources(cpu=2.0), 1.0)
    view.capacity_changed.clear()
    view.release("d" * 32)
    assert view.index.free_of(did)[0] == 4.0
    assert view.capacity_changed.is_set()
