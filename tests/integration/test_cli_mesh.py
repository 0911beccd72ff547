"""The `cmesh` command driven as a user would: up, status, submit, jobs, result, down, demo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from computemesh.models.market import RATE_FIELDS
from computemesh.transport import is_process_alive

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

REPO = Path(__file__).resolve().parents[2]


def cmesh(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"CMESH_HOME", "CMESH_NATS_URL"}}
    return subprocess.run(
        [sys.executable, "-m", "computemesh", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def test_up_status_submit_result_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # the status table's columns unfolded
    state = as_json(cmesh(tmp_path, "up", "--nodes", "2", "--json"))
    try:
        assert len(state["nodes"]) == 2
        status = as_json(cmesh(tmp_path, "status", "--json"))
        assert {node["did"] for node in status["nodes"]} == {n["did"] for n in state["nodes"]}
        assert all(node["sandboxed"] for node in status["nodes"])
        assert [node["network"] for node in status["nodes"]] == [False, False]
        assert all(set(RATE_FIELDS) <= set(node) for node in status["nodes"])
        table = cmesh(tmp_path, "status")
        assert table.returncode == 0, table.stderr
        assert "price/billion fuel" in table.stdout and "network" in table.stdout

        ranked = as_json(cmesh(tmp_path, "match", "--dry-run", "examples/primes.yaml", "--json"))
        assert len(ranked["candidates"]) == 2
        assert ranked["candidates"][0]["provider"] == state["nodes"][0]["did"]  # cheapest
        assert ranked["explanation"]["placeable"] is True

        submitted = as_json(cmesh(tmp_path, "submit", "examples/primes.yaml", "--json"))
        assert submitted["status"] == "running"
        result = as_json(cmesh(tmp_path, "result", submitted["job_id"][:8], "--json"))
        for _ in range(20):
            if result["status"] == "completed":
                break
            result = as_json(cmesh(tmp_path, "result", submitted["job_id"], "--json"))
        assert result["status"] == "completed"
        assert result["verified"] is True
        assert result["results"][0]["stdout"] == "78498 primes below 1000000\n"

        waited = as_json(cmesh(tmp_path, "submit", "examples/sort.yaml", "--wait", "--json"))
        assert waited["status"] == "completed" and waited["verified"] is True

        impossible = tmp_path / "huge.yaml"
        impossible.write_text('name: huge\ncommand: ["true"]\nresources: {cpu: 512}\n')
        refused = cmesh(tmp_path, "submit", str(impossible), "--json")
        assert refused.returncode == 1
        error = json.loads(refused.stdout)["error"]
        assert error["code"] == "no_provider"
        per_node = [line for line in error["reasons"] if not line.startswith("index: ")]
        assert len(per_node) == 2
        assert all("cpu: needs 512, node has" in reason for reason in per_node)
        assert any(line.startswith("index: cpu removes 2 of 2") for line in error["reasons"])

        jobs = as_json(cmesh(tmp_path, "jobs", "--json"))
        assert {job["status"] for job in jobs} == {"completed", "no_provider"}
    finally:
        down = as_json(cmesh(tmp_path, "down", "--json"))
    assert sorted(down["stopped"]) == ["hub-1", "node-1", "node-2"]
    assert as_json(cmesh(tmp_path, "down", "--json"))["was_running"] is False


def test_three_hubs_status_survive_one_lost_and_down_stops_all(tmp_path: Path) -> None:
    state = as_json(cmesh(tmp_path, "up", "--hubs", "3", "--nodes", "2", "--json"))
    try:
        assert [hub["name"] for hub in state["hubs"]] == ["hub-1", "hub-2", "hub-3"]
        assert state["nats_url"] == ",".join(hub["url"] for hub in state["hubs"])
        status = as_json(cmesh(tmp_path, "status", "--json"))
        assert [hub["alive"] for hub in status["hubs"]] == [True, True, True]
        assert len(status["nodes"]) == 2

        os.kill(state["hubs"][0]["pid"], signal.SIGKILL)
        # Nodes that were on the lost hub need a moment to reconnect to another one.
        status = as_json(cmesh(tmp_path, "status", "--window", "5", "--json"))
        assert [hub["alive"] for hub in status["hubs"]] == [False, True, True]
        assert {node["did"] for node in status["nodes"]} == {n["did"] for n in state["nodes"]}

        waited = as_json(cmesh(tmp_path, "submit", "examples/sort.yaml", "--wait", "--json"))
        assert waited["status"] == "completed" and waited["verified"] is True
    finally:
        down = as_json(cmesh(tmp_path, "down", "--json"))
    assert sorted(down["stopped"]) == ["hub-2", "hub-3", "node-1", "node-2"]
    assert all(not is_process_alive(hub["pid"]) for hub in state["hubs"])


def test_hubs_cannot_join_an_existing_url(tmp_path: Path) -> None:
    refused = cmesh(tmp_path, "up", "--hubs", "3", "--nats", "nats://127.0.0.1:4222", "--json")
    assert refused.returncode != 0
    assert json.loads(refused.stdout)["error"]["code"] == "bad_hubs"


def test_demo_json_summary(tmp_path: Path) -> None:
    summary = as_json(cmesh(tmp_path, "demo", "--nodes", "2", "--jobs", "5", "--json"))
    assert summary["submitted"] == 5
    assert summary["completed"] == 5
    assert summary["verified"] == 5
    assert summary["correct"] == 5
    assert summary["failed"] == 0
    assert not (tmp_path / "demo" / "mesh" / "state.json").exists()
