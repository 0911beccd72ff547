"""`cmesh cancel` on a real local mesh: a sandboxed job stopped on its node, escrow refunded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.test_cli_mesh import as_json, cmesh

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]


def test_cancel_stops_a_running_job_and_refunds_it(tmp_path: Path) -> None:
    as_json(cmesh(tmp_path, "up", "--nodes", "1", "--json"))
    try:
        spec = tmp_path / "long.yaml"
        spec.write_text('name: long\ncommand: ["sleep", "300"]\ntimeout_s: 600\n')
        submitted = as_json(cmesh(tmp_path, "submit", str(spec), "--json"))
        assert submitted["status"] == "running"

        cancelled = as_json(cmesh(tmp_path, "cancel", submitted["job_id"][:8], "--json"))

        assert (cancelled["status"], cancelled["reason"]) == ("failed", "cancelled by the consumer")
        (allocation,) = cancelled["cancelled"]
        assert allocation["provider"] == submitted["providers"][0]
        assert (allocation["state"], allocation["refunded"]) == ("killed", True)
        assert [entry["event"] for entry in cancelled["history"]][-2:] == ["failed", "cancelled"]

        again = as_json(cmesh(tmp_path, "cancel", submitted["job_id"], "--json"))
        assert again["status"] == "failed"
        assert [item["state"] for item in again["cancelled"]] == ["killed"]

        status = as_json(cmesh(tmp_path, "status", "--json"))
        (node,) = status["nodes"]
        assert node["free"]["cpu"] == node["hardware"]["cpu_count"]  # capacity freed
    finally:
        cmesh(tmp_path, "down")
