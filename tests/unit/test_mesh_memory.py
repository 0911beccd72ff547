"""A job end to end on the in-memory transport: bid, contract, run, signed result, verify."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from computemesh.actor import Actor, behaviours
from computemesh.identity import Identity
from computemesh.models.errors import SpecError, VerificationError
from computemesh.models.job import JobSpec
from computemesh.models.market import Hardware, JobResult, ResourceUsage
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.protocol import sign_result
from computemesh.store import AllocationRepository, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from tests.fakes import FakeExecutor

FAST = OrchestratorSettings(bid_window_s=0.3, placement_timeout_s=1.0, fetch_interval_s=0.5)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)


@dataclass
class Mesh:
    hub: MemoryHub
    nodes: list[ProviderNode]
    orchestrator: Orchestrator


def make_node(hub: MemoryHub, home: Path, region: str, price: float) -> ProviderNode:
    return ProviderNode(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
        settings=NodeSettings(home=home, region=region, price_per_cpu_hour=price),
        hardware=HARDWARE,
        allocations=AllocationRepository(open_database("sqlite://")),
        executors={"process": FakeExecutor()},
    )


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    hub = MemoryHub()
    nodes = [
        make_node(hub, tmp_path / "n1", "eu-west", 0.2),
        make_node(hub, tmp_path / "n2", "us-east", 0.1),
    ]
    for node in nodes:
        await node.start()
    orchestrator = Orchestrator(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
        jobs=JobRepository(open_database("sqlite://")),
        settings=FAST,
    )
    await orchestrator.start()
    await orchestrator.discover(window_s=0.2)
    yield Mesh(hub, nodes, orchestrator)
    await orchestrator.stop()
    for node in nodes:
        await node.stop()


def job(**overrides: object) -> JobSpec:
    data = {
        "name": "echo",
        "command": ["cat", "in.txt"],
        "inputs": [{"path": "in.txt", "content": "hello mesh"}],
        "outputs": ["out.txt"],
        **overrides,
    }
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


async def test_job_runs_on_cheapest_node_and_result_verifies(mesh: Mesh) -> None:
    record = await mesh.orchestrator.run(job(), timeout=5)
    assert record.status == "completed"
    assert record.verified is True
    (result,) = record.results
    body = result["body"]
    assert body["provider"] == mesh.nodes[1].did  # the cheaper node
    (output,) = body["outputs"]
    assert base64.b64decode(output["content_b64"]) == b"hello mesh"
    assert mesh.orchestrator.known_nodes.keys() == {node.did for node in mesh.nodes}


async def test_constraints_steer_placement(mesh: Mesh) -> None:
    record = await mesh.orchestrator.run(job(constraints={"regions": ["eu-west"]}), timeout=5)
    assert record.status == "completed"
    assert record.contracts[0]["terms"]["provider"] == mesh.nodes[0].did


async def test_job_nobody_can_take_says_why(mesh: Mesh) -> None:
    record = await mesh.orchestrator.run(
        job(resources={"memory_mb": 100_000}, constraints={"regions": ["mars-1"]}), timeout=5
    )
    assert record.status == "no_provider"
    lines = [line for line in record.reason.splitlines() if not line.startswith("index: ")]
    assert len(lines) == 2  # one per node
    for line in lines:
        assert "memory: needs 100000 MB, node has 4096 MB" in line
        assert "region:" in line and "not in mars-1" in line


async def test_replicas_run_on_distinct_providers_and_agree(mesh: Mesh) -> None:
    record = await mesh.orchestrator.run(job(replicas=2), timeout=5)
    assert record.status == "completed"
    assert record.verified is True
    providers = {doc["body"]["provider"] for doc in record.results}
    assert providers == {node.did for node in mesh.nodes}


async def test_forged_result_is_not_accepted(mesh: Mesh) -> None:
    orchestrator = mesh.orchestrator
    job_id = orchestrator.submit(job())
    (contract,) = await orchestrator.place(job_id)
    await orchestrator.await_outcome(job_id, timeout=5)
    terms = contract["terms"]
    impostor = Identity.generate()
    forged = JobResult(
        contract_id=terms["contract_id"],
        job_id=job_id,
        provider=impostor.did,
        status="completed",
        exit_code=0,
        stdout="forged",
        stderr="",
        usage=ResourceUsage(wall_s=0, cpu_s=0, max_rss_kb=0),
        finished_at_ms=0,
    )
    intruder = Actor(identity=impostor, transport=MemoryTransport(mesh.hub))
    await intruder.send(
        orchestrator.actor.did, behaviours.RESULT, {"result": sign_result(impostor, forged)}
    )
    await orchestrator.fetch_results(job_id)
    record = orchestrator.jobs.get(job_id)
    assert [doc["body"]["stdout"] for doc in record.results] == ["cat in.txt"]
    assert record.verified is True


async def test_tampered_output_fails_verification(mesh: Mesh) -> None:
    def lying(request: object) -> tuple[int, bytes, dict[str, bytes]]:
        return 0, b"", {"out.txt": b"real bytes"}

    for node in mesh.nodes:
        executor = node.executors["process"]
        assert isinstance(executor, FakeExecutor)
        executor.behaviour = lying
    job_id = mesh.orchestrator.submit(job())
    (contract,) = await mesh.orchestrator.place(job_id)
    provider = next(n for n in mesh.nodes if n.did == contract["terms"]["provider"])
    await provider.wait_idle()
    stored = provider.allocations.get(contract["terms"]["contract_id"])
    assert stored is not None and stored.result is not None
    # Re-sign a result whose output bytes no longer match the signed hash.
    body = dict(stored.result["body"])
    body["outputs"] = [{**body["outputs"][0], "content_b64": base64.b64encode(b"fake").decode()}]
    tampered = sign_result(provider.actor.identity, JobResult.model_validate(body))
    with pytest.raises(VerificationError, match="does not match its signed sha256"):
        mesh.orchestrator.accept_result(job_id, tampered)


async def test_spec_too_large_for_an_envelope_is_refused_before_storing(mesh: Mesh) -> None:
    chunk = "x" * 400_000
    inputs = [{"path": f"in{i}.txt", "content": chunk} for i in range(3)]
    with pytest.raises(SpecError, match=r"at most \d+ bytes can travel"):
        mesh.orchestrator.submit(job(inputs=inputs))
    assert mesh.orchestrator.jobs.recent() == []
