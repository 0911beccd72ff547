"""A wasm job end to end on the in-memory transport: fuel reaches the signed, verified
result; stdin reaches the guest and its output the consumer's logs."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from computemesh.actor import Actor
from computemesh.app.demo import outputs_match
from computemesh.executor import WasmExecutor
from computemesh.identity import Identity
from computemesh.models.job import JobSpec, sha256_hex
from computemesh.models.market import Hardware
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import load_job_spec
from computemesh.store import AllocationRepository, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport

WASM_EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "wasm"
FAST = OrchestratorSettings(bid_window_s=0.3, placement_timeout_s=1.0, fetch_interval_s=0.5)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)
PRIMES_FUEL = 45_041_629


@pytest.fixture
async def orchestrator(tmp_path: Path) -> AsyncIterator[Orchestrator]:
    hub = MemoryHub()
    nodes = [
        ProviderNode(
            actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
            settings=NodeSettings(home=tmp_path / f"n{index}"),
            hardware=HARDWARE,
            allocations=AllocationRepository(open_database("sqlite://")),
            executors={"wasm": WasmExecutor()},
        )
        for index in range(2)
    ]
    for node in nodes:
        await node.start()
    consumer = Orchestrator(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
        jobs=JobRepository(open_database("sqlite://")),
        settings=FAST,
    )
    await consumer.start()
    await consumer.discover(window_s=0.2)
    yield consumer
    await consumer.stop()
    for node in nodes:
        await node.stop()


async def test_replicas_agree_on_output_and_fuel(orchestrator: Orchestrator) -> None:
    spec = load_job_spec(WASM_EXAMPLES / "primes.yaml").model_copy(update={"replicas": 2})
    record = await orchestrator.run(spec, timeout=10)
    assert (record.status, record.verified) == ("completed", True)
    bodies = [document["body"] for document in record.results]
    assert [body["usage"]["fuel"] for body in bodies] == [PRIMES_FUEL, PRIMES_FUEL]
    for body in bodies:
        (output,) = body["outputs"]
        assert base64.b64decode(output["content_b64"]) == b"primes below 1000000: 78498\n"
    expected = json.loads((WASM_EXAMPLES / "expected.json").read_text())
    assert outputs_match(record, expected["primes.yaml"])


async def test_every_wasm_example_is_a_valid_spec() -> None:
    specs = sorted(WASM_EXAMPLES.glob("*.yaml"))
    assert len(specs) >= 2
    for path in specs:
        spec = load_job_spec(path)
        assert spec.executor == "wasm" and spec.is_resolved()


ECHO_WAT = (WASM_EXAMPLES / "echo.wat").read_text()


async def test_stdin_reaches_the_guest_and_its_output_the_consumer_logs(
    orchestrator: Orchestrator,
) -> None:
    text = "".join(f"line {number}\n" for number in range(200))
    spec = JobSpec.model_validate(
        {
            "name": "echo",
            "executor": "wasm",
            "command": ["echo.wat"],
            "inputs": [
                {"path": "echo.wat", "content": ECHO_WAT, "sha256": sha256_hex(ECHO_WAT.encode())},
                {"path": "in.txt", "content": text, "sha256": sha256_hex(text.encode())},
            ],
            "stdin": "in.txt",
            "timeout_s": 10,
        }
    )
    record = await orchestrator.run(spec, timeout=10)
    assert record.status == "completed"
    assert [document["body"]["stdout"] for document in record.results] == [text]
    for _ in range(100):
        logged = "".join(chunk.data for chunk in orchestrator.jobs.logs.after(record.job_id))
        if logged == text:
            break
        await asyncio.sleep(0.1)
    assert logged == text
