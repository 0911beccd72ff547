"""A short chaos run on real processes: a 3-hub NATS cluster, provider nodes under
bubblewrap and a consumer process, sharing the local mesh's ledger; one consumer, one hub and
one provider (one running a checkpointed job, when one does within a few seconds) are
SIGKILLed mid-run and restarted. No job may be lost, none accepted twice, no contract paid
twice or more than its price (a dropped contract's verified checkpoint included), no payable
result or checkpoint left unpaid, no escrow left locked, and the mesh recovers from every
kill."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(400),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

REPO = Path(__file__).resolve().parents[2]
JOBS = 40
CHECKPOINT_EVERY = 4


def test_killing_a_consumer_a_hub_and_a_provider_loses_nothing_and_pays_once() -> None:
    command = [
        sys.executable,
        str(REPO / "bench" / "chaos.py"),
        *("--jobs", str(JOBS), "--nodes", "3", "--interval", "1.5", "--deadline", "300"),
        *("--each-once", "--kinds", "orchestrator", "hub", "provider", "--json"),
    ]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=380)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])

    assert result["finished"] is True, result["not_completed"]
    assert result["submitted"] == JOBS
    assert result["lost"] == 0, result["not_completed"]
    assert result["duplicated"] == 0
    assert result["completed"] == JOBS
    assert result["escrows_locked"] >= JOBS  # the ledger is on: every contract locked escrow
    assert result["double_paid"] == 0
    assert result["underpaid"] == 0
    assert result["escrow_locked_after"] == 0, result["open_escrows"]
    assert result["ledger_ok"] is True, result["ledger_problems"]
    assert result["kills"] == {"orchestrator": 1, "hub": 1, "provider": 1}
    assert result["checkpointing"] == JOBS // CHECKPOINT_EVERY
    assert result["unrecovered"] == 0, result["recoveries"]
    assert set(result["recovery_by_kind"]) == {"orchestrator", "hub", "provider"}
    assert result["recovery_s"] == max(result["recovery_by_kind"].values())
