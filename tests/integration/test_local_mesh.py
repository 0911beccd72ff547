"""A real local mesh: nats-server, three provider processes under bubblewrap, real jobs."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from computemesh.actor import subject_for
from computemesh.app.consumer import consumer_session
from computemesh.app.demo import load_examples, outputs_match, run_jobs
from computemesh.app.home import MeshHome
from computemesh.app.localmesh import mesh_down, mesh_up
from computemesh.identity import Identity, seal
from computemesh.identity.canonical import canonical_json
from computemesh.models.job import JobSpec
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.transport import NatsTransport, is_process_alive

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = OrchestratorSettings(bid_window_s=1.0, placement_timeout_s=60)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshHome, dict[str, Any]]]:
    home = MeshHome(tmp_path_factory.mktemp("mesh"))
    state = mesh_up(home, nodes=3)
    yield home, state
    outcome = mesh_down(home)
    assert len(outcome["stopped"]) == 4
    for node in state["nodes"]:
        assert not is_process_alive(node["pid"])


@pytest.fixture
async def orchestrator(mesh: tuple[MeshHome, dict[str, Any]]) -> AsyncIterator[Orchestrator]:
    home, state = mesh
    async with consumer_session(home, state["nats_url"], settings=SETTINGS) as session:
        found = await session.discover(window_s=0.5)
        assert len(found) == 3
        yield session


def spec(command: list[str], **overrides: Any) -> JobSpec:
    data = {"name": "probe", "command": command, "timeout_s": 20, **overrides}
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


async def test_ten_example_jobs_all_verified_and_correct(orchestrator: Orchestrator) -> None:
    rows = await run_jobs(orchestrator, load_examples(EXAMPLES), 10)
    assert [row["status"] for row in rows] == ["completed"] * 10
    assert all(row["verified"] and row["correct"] for row in rows)
    assert len({row["provider"] for row in rows}) >= 2
    primes = next(row for row in rows if row["example"] == "primes.yaml")
    record = orchestrator.jobs.get(primes["job_id"])
    assert outputs_match(record, {"primes.txt": _sha("78498\n")})


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


async def test_memory_and_time_limits_kill_and_the_node_keeps_serving(
    orchestrator: Orchestrator,
) -> None:
    memory_bomb = spec(
        ["python3", "-c", "x = bytearray(1024 * 1024 * 1024); print(len(x))"],
        resources={"memory_mb": 128},
    )
    endless = spec(["sh", "-c", "while :; do :; done"], timeout_s=2)
    bomb, loop = await asyncio.gather(
        orchestrator.run(memory_bomb, timeout=30), orchestrator.run(endless, timeout=30)
    )
    assert bomb.status == "failed"
    assert bomb.verified is True
    (bomb_result,) = bomb.results
    assert "MemoryError" in bomb_result["body"]["stderr"] or bomb_result["body"]["status"] in {
        "killed",
        "failed",
    }
    assert loop.status == "failed"
    (loop_result,) = loop.results
    # A busy loop with 1 cpu for 2 s meets its wall-time and its CPU-time limit together:
    # whichever the machine's load lets strike first ends it.
    status, reason = loop_result["body"]["status"], loop_result["body"]["reason"]
    assert (status, reason) == ("timeout", "exceeded wall time limit of 2.0 s") or (
        status == "killed" and reason.endswith("exceeded cpu time limit of 2.0 s")
    ), (status, reason)
    after = await orchestrator.run(spec(["echo", "alive"]), timeout=30)
    assert after.status == "completed"
    assert after.results[0]["body"]["stdout"] == "alive\n"


@pytest.mark.parametrize(
    "command",
    [
        ["python3", "-c", "import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)"],
        ["sh", "-c", "echo x > /usr/escaped.txt"],
        ["cat", "/etc/shadow"],
        ["ls", "/root"],
    ],
    ids=["network", "write-outside", "read-unbound-shadow", "read-unbound-root"],
)
async def test_sandbox_escapes_fail(orchestrator: Orchestrator, command: list[str]) -> None:
    record = await orchestrator.run(spec(command), timeout=30)
    assert record.status == "failed"
    assert record.verified is True
    assert record.results[0]["body"]["exit_code"] != 0
    assert not Path("/usr/escaped.txt").exists()


async def test_forged_and_replayed_messages_are_rejected_over_nats(
    mesh: tuple[MeshHome, dict[str, Any]], orchestrator: Orchestrator
) -> None:
    _, state = mesh
    node_did = state["nodes"][0]["did"]
    attacker = Identity.generate()
    transport = await NatsTransport.connect(state["nats_url"])
    try:
        fetch = "/mesh/allocation/result_fetch"
        honest = seal(attacker, recipient=node_did, behavior=fetch, payload={"contract_id": "0"})
        first = json.loads(await transport.request(subject_for(node_did), honest, timeout=5))
        replay = json.loads(await transport.request(subject_for(node_did), honest, timeout=5))
        tampered = json.loads(honest)
        tampered["payload"] = {"contract_id": "1"}
        forged = json.loads(
            await transport.request(subject_for(node_did), canonical_json(tampered), timeout=5)
        )
    finally:
        await transport.close()
    assert first["payload"]["code"] == "unknown_allocation"  # verified, then refused by handler
    assert replay["payload"]["code"] == "replayed"
    assert forged["payload"]["code"] == "bad_signature"
    after = await orchestrator.run(spec(["echo", "still serving"]), timeout=30)
    assert after.status == "completed"
