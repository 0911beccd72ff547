"""One failure at a time on real processes: nats-server hubs, sandboxed provider nodes and a
consumer process, all sharing the local mesh's ledger.

- one of three hubs SIGKILLed while jobs run (and left dead): every job completes once;
- the consumer SIGKILLed mid-flight and started again: it resumes from its store, every
  accepted job completes exactly once and no escrow is paid twice or left locked.

Both are judged by the chaos run's own tally (``bench/chaos.py``), which reads the
consumer's store and audits the ledger's receipts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from computemesh.app.home import MeshHome
from computemesh.app.localmesh import mesh_down, mesh_up
from computemesh.store.jobs import FINAL_STATES
from computemesh.transport import is_process_alive
from tests.integration.meshproc import (
    chaos,
    finish_consumer,
    hub_clients,
    statuses,
    stop_consumer,
    wait_until,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

JOBS = 24
CONCURRENCY = 4
STARTED_BOUND_S = 90.0
FINISH_BOUND_S = 180.0


@pytest.fixture
def home(tmp_path: Path) -> Iterator[MeshHome]:
    home = MeshHome(tmp_path / "home")
    mesh_up(home, nodes=3, hubs=3)
    yield home
    mesh_down(home)


def some_running(home: MeshHome) -> bool:
    """Mid-flight: a job holds a contract, and most are not done yet."""
    seen = statuses(home)
    return "running" in seen and seen.count("completed") < JOBS // 2


def assert_all_done_once(result: dict[str, Any]) -> None:
    assert result["submitted"] == JOBS
    assert result["completed"] == JOBS, result["not_completed"]
    assert result["lost"] == 0, result["not_completed"]
    assert result["duplicated"] == 0
    assert result["double_paid"] == 0
    assert result["underpaid"] == 0
    assert result["escrows_locked"] >= JOBS
    assert result["escrow_locked_after"] == 0, result["open_escrows"]
    assert result["ledger_ok"] is True, result["ledger_problems"]


def test_losing_one_of_three_hubs_mid_run_loses_and_duplicates_nothing(home: MeshHome) -> None:
    log = chaos.ChaosLog()
    consumer = chaos.consumer_process(home, JOBS, CONCURRENCY)
    try:
        wait_until(lambda: some_running(home), "a job running", timeout_s=STARTED_BOUND_S)
        victim = max((home.read_state() or {})["hubs"], key=hub_clients)
        assert hub_clients(victim) >= 1
        log.note("hub", victim["name"])
        chaos.kill(int(victim["pid"]))
        finish_consumer(home, consumer, timeout_s=FINISH_BOUND_S)
    finally:
        stop_consumer(consumer)

    assert not is_process_alive(int(victim["pid"]))
    assert_all_done_once(chaos.tally(home, JOBS, log))


def test_a_consumer_killed_mid_flight_resumes_and_pays_each_job_once(home: MeshHome) -> None:
    log = chaos.ChaosLog()
    first = chaos.consumer_process(home, JOBS, CONCURRENCY)
    try:
        wait_until(lambda: some_running(home), "a job running", timeout_s=STARTED_BOUND_S)
        log.note("orchestrator", f"pid {first.pid}")
    finally:
        stop_consumer(first)
    left = [status for status in statuses(home) if status not in FINAL_STATES]
    assert left, "the killed consumer left nothing to resume"

    again = chaos.consumer_process(home, JOBS, CONCURRENCY)
    try:
        finish_consumer(home, again, timeout_s=FINISH_BOUND_S)
    finally:
        stop_consumer(again)

    assert_all_done_once(chaos.tally(home, JOBS, log))
