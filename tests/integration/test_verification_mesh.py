"""Verification on a real local mesh: nats-server, honest nodes and two that lie on purpose.

The liars are the cheapest nodes, so they are offered every job first; each signs results
whose outputs it changed before signing (``--fault wrong``), so only verification can
catch them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from computemesh.app.consumer import consumer_session
from computemesh.app.home import MeshHome
from computemesh.app.localmesh import NodePlan, mesh_down, mesh_up, node_command, wait_nodes_ready
from computemesh.identity import load_or_create_identity
from computemesh.models.job import JobSpec
from computemesh.orchestrator import OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.transport import spawn_detached, stop_process

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

SETTINGS = OrchestratorSettings(bid_window_s=1.0, placement_timeout_s=30)
EXPECTED = hashlib.sha256(b"42\n").hexdigest()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A fresh mesh per test, so each consumer starts with no record of anyone."""
    home = MeshHome(tmp_path / "mesh")
    state = mesh_up(home, nodes=3)
    liars = [_spawn_liar(home, state["nats_url"], f"liar-{index}") for index in (1, 2)]
    try:
        wait_nodes_ready(liars)
        yield {"state": state, "liars": liars, "home": home}
    finally:
        for liar in liars:
            stop_process(liar["pid"])
        mesh_down(home)


def _spawn_liar(home: MeshHome, nats_url: str, name: str) -> dict[str, Any]:
    node_home = home.node_home(name)
    node_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    plan = NodePlan(name=name, region="eu-west", price_per_cpu_hour=0.01)
    command = [*node_command(node_home, nats_url, plan, sandbox=True), "--fault", "wrong"]
    log_file = home.logs_dir / f"{name}.log"
    pid = spawn_detached(command, log_file, env={**os.environ, "PYTHONUNBUFFERED": "1"}).pid
    did = load_or_create_identity(node_home).did
    return {"name": name, "pid": pid, "did": did, "home": str(node_home), "log": str(log_file)}


def spec(policy: dict[str, Any]) -> JobSpec:
    data = {
        "name": "answer",
        "command": ["sh", "-c", "echo 42 > out.txt"],
        "outputs": ["out.txt"],
        "timeout_s": 20,
        "verification": policy,
    }
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


def accepted_outputs(record: Any, liars: set[str]) -> set[bytes]:
    """The output bytes of every result that did not come from a liar."""
    return {
        base64.b64decode(doc["body"]["outputs"][0]["content_b64"])
        for doc in record.results
        if doc["body"]["provider"] not in liars
    }


@pytest.mark.parametrize(
    "policy",
    [{"policy": "redundant", "k": 2, "n": 5}, {"policy": "adaptive+audit", "n": 5}],
    ids=["redundant", "adaptive+audit"],
)
async def test_no_wrong_result_is_accepted_and_liars_are_excluded(
    mesh: dict[str, Any], policy: dict[str, Any]
) -> None:
    liars = {liar["did"] for liar in mesh["liars"]}
    home = mesh["home"]
    async with consumer_session(home, mesh["state"]["nats_url"], settings=SETTINGS) as orch:
        await orch.discover(window_s=1.0)
        records = [await orch.run(spec(policy), timeout=60) for _ in range(3)]
        frauds = [fraud for record in records for fraud in orch.jobs.fraud.for_job(record.job_id)]
        excluded = orch.verification.excluded()
    for record in records:
        assert record.status == "completed" and record.verified is True, record.reason
        assert accepted_outputs(record, liars) == {b"42\n"}
    assert {fraud["provider"] for fraud in frauds} == liars
    assert excluded == liars
    for later in records[1:]:
        placed = {contract["terms"]["provider"] for contract in later.contracts}
        assert not placed & liars
    first = records[0]
    assert any(
        doc["body"]["outputs"][0]["sha256"] != EXPECTED
        for doc in first.results
        if doc["body"]["provider"] in liars
    )
