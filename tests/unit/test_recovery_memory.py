"""Crash recovery on the in-memory mesh: a restarted orchestrator resumes its jobs, and an
allocation lost by a restarted or vanished provider is placed on another one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from computemesh.actor import Actor
from computemesh.executor import ExecutionResult
from computemesh.identity import Identity
from computemesh.models.job import JobSpec
from computemesh.models.market import Hardware
from computemesh.node.provider import INTERRUPTED_REASON, ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.recovery import Recovery, RecoverySettings, relocations_of
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.store import AllocationRepository, JobRecord, JobRepository, open_database
from computemesh.store.database import sqlite_url
from computemesh.transport import MemoryHub, MemoryTransport
from tests.fakes import FakeExecutor, FakeHandle

pytestmark = pytest.mark.timeout(60)

FAST = OrchestratorSettings(bid_window_s=0.2, placement_timeout_s=2.0, fetch_interval_s=0.3)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)


@dataclass
class GatedExecutor(FakeExecutor):
    """A fake whose runs finish only once ``gate`` is set (never, if nobody sets it)."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, handle: FakeHandle) -> ExecutionResult:
        await self.gate.wait()
        return await super().wait(handle)


@dataclass
class Node:
    identity: Identity
    allocations: AllocationRepository
    executor: FakeExecutor
    node: ProviderNode


class Mesh:
    def __init__(self, hub: MemoryHub, tmp_path: Path) -> None:
        self.hub = hub
        self.tmp_path = tmp_path
        self.consumer = Identity.generate()
        self.jobs_url = sqlite_url(tmp_path / "consumer.db")
        self.nodes: dict[str, Node] = {}

    async def add_node(self, name: str, price: float, executor: FakeExecutor) -> Node:
        identity = Identity.generate()
        allocations = AllocationRepository(open_database(sqlite_url(self.tmp_path / f"{name}.db")))
        self.nodes[name] = await self._start(name, identity, allocations, price, executor)
        return self.nodes[name]

    async def restart_node(self, name: str) -> Node:
        """The same identity and store, a new process's worth of node; its run was lost."""
        old = self.nodes[name]
        await old.node.stop()
        price = old.node.settings.price_per_cpu_hour
        self.nodes[name] = await self._start(
            name, old.identity, old.allocations, price, FakeExecutor()
        )
        return self.nodes[name]

    async def _start(
        self,
        name: str,
        identity: Identity,
        allocations: AllocationRepository,
        price: float,
        executor: FakeExecutor,
    ) -> Node:
        node = ProviderNode(
            actor=Actor(identity=identity, transport=MemoryTransport(self.hub)),
            settings=NodeSettings(
                home=self.tmp_path / name, region="eu-west", price_per_cpu_hour=price
            ),
            hardware=HARDWARE,
            allocations=allocations,
            executors={"process": executor},
        )
        await node.start()
        return Node(identity, allocations, executor, node)

    async def orchestrator(self) -> Orchestrator:
        """A consumer process of this mesh: same key and store every time."""
        orchestrator = Orchestrator(
            actor=Actor(identity=self.consumer, transport=MemoryTransport(self.hub)),
            jobs=JobRepository(open_database(self.jobs_url)),
            settings=FAST,
        )
        await orchestrator.start()
        await orchestrator.discover(window_s=0.1)
        return orchestrator

    async def stop(self) -> None:
        for node in self.nodes.values():
            await node.node.stop()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    mesh = Mesh(MemoryHub(), tmp_path)
    yield mesh
    await mesh.stop()


def job(name: str = "echo") -> JobSpec:
    data = {
        "name": name,
        "command": ["cat", "in.txt"],
        "inputs": [{"path": "in.txt", "content": f"hello {name}"}],
        "outputs": ["out.txt"],
    }
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


def providers(record: JobRecord) -> list[str]:
    return [contract["terms"]["provider"] for contract in record.contracts]


def assert_done_once(record: JobRecord) -> None:
    assert record.status == "completed", record.reason
    assert record.verified is True
    (result,) = record.results
    (contract,) = record.contracts
    assert result["body"]["contract_id"] == contract["terms"]["contract_id"]


async def test_a_restarted_orchestrator_resumes_every_unfinished_job(mesh: Mesh) -> None:
    gated = GatedExecutor()
    await mesh.add_node("n1", 0.1, gated)
    first = await mesh.orchestrator()
    running = first.submit(job("running"))
    await first.place(running)
    pending = first.submit(job("pending"))
    bidding = first.submit(job("bidding"))
    first.jobs.set_status(bidding, "bidding")
    await first.stop()  # the process dies; the result below is pushed to nobody
    gated.gate.set()
    await asyncio.sleep(0.1)

    second = await mesh.orchestrator()
    try:
        report = await second.recover()
    finally:
        await second.stop()

    assert sorted(report.placed) == sorted([pending, bidding])
    assert report.awaited == [running]
    assert report.unfinished == []
    records = [second.jobs.get(job_id) for job_id in (running, pending, bidding)]
    for record in records:
        assert_done_once(record)
    contract_ids = {record.contracts[0]["terms"]["contract_id"] for record in records}
    assert len(contract_ids) == 3


async def test_an_allocation_lost_to_a_provider_restart_runs_elsewhere(mesh: Mesh) -> None:
    await mesh.add_node("steady", 0.2, FakeExecutor())
    flaky = await mesh.add_node("flaky", 0.1, GatedExecutor())
    orchestrator = await mesh.orchestrator()
    try:
        job_id = orchestrator.submit(job())
        await orchestrator.place(job_id)
        assert providers(orchestrator.jobs.get(job_id)) == [flaky.identity.did]

        restarted = await mesh.restart_node("flaky")
        (lost,) = restarted.allocations.by_job(job_id)
        assert lost.result is not None
        assert lost.result["body"]["reason"] == INTERRUPTED_REASON

        record = await orchestrator.recovery.follow(job_id)
    finally:
        await orchestrator.stop()

    assert_done_once(record)
    assert providers(record) == [mesh.nodes["steady"].identity.did]
    assert record.results[0]["body"]["provider"] == mesh.nodes["steady"].identity.did
    assert relocations_of(record) == 1


async def test_an_allocation_on_a_vanished_provider_runs_elsewhere(mesh: Mesh) -> None:
    await mesh.add_node("steady", 0.2, FakeExecutor())
    gone = await mesh.add_node("gone", 0.1, GatedExecutor())
    orchestrator = await mesh.orchestrator()
    orchestrator.recovery = Recovery(orchestrator, RecoverySettings(unreachable_after_s=0.2))
    try:
        job_id = orchestrator.submit(job())
        await orchestrator.place(job_id)
        assert providers(orchestrator.jobs.get(job_id)) == [gone.identity.did]
        await gone.node.stop()

        record = await orchestrator.recovery.follow(job_id)
    finally:
        await orchestrator.stop()

    assert_done_once(record)
    assert providers(record) == [mesh.nodes["steady"].identity.did]


async def test_a_contract_is_superseded_once_and_never_on_a_final_job(mesh: Mesh) -> None:
    await mesh.add_node("n1", 0.1, GatedExecutor())
    orchestrator = await mesh.orchestrator()
    try:
        job_id = orchestrator.submit(job())
        (contract,) = await orchestrator.place(job_id)
        contract_id = contract["terms"]["contract_id"]

        assert orchestrator.jobs.supersede_contract(job_id, contract_id) is True
        assert orchestrator.jobs.supersede_contract(job_id, contract_id) is False
        assert orchestrator.jobs.get(job_id).status == "bidding"
        orchestrator.jobs.set_status(job_id, "failed", "given up")
        assert orchestrator.jobs.supersede_contract(job_id, "0" * 32) is False
    finally:
        await orchestrator.stop()


async def test_relocation_gives_up_after_its_bound(mesh: Mesh) -> None:
    first = await mesh.add_node("first", 0.1, GatedExecutor())
    second = await mesh.add_node("second", 0.2, GatedExecutor())
    orchestrator = await mesh.orchestrator()
    orchestrator.recovery = Recovery(orchestrator, RecoverySettings(max_relocations=1))
    try:
        job_id = orchestrator.submit(job())
        (contract,) = await orchestrator.place(job_id)
        assert contract["terms"]["provider"] == first.identity.did

        (moved,) = await orchestrator.recovery.relocate(job_id, {first.identity.did})
        assert moved["terms"]["provider"] == second.identity.did
        # A restarted consumer counts on from the job's stored history.
        orchestrator.recovery = Recovery(orchestrator, RecoverySettings(max_relocations=1))
        assert await orchestrator.recovery.relocate(job_id, {second.identity.did}) == []
        record = orchestrator.jobs.get(job_id)
    finally:
        await orchestrator.stop()

    assert record.status == "failed"
    assert "relocated too many times" in record.reason
    assert relocations_of(record) == 2


async def test_relocating_a_job_whose_providers_are_all_kept_changes_nothing(mesh: Mesh) -> None:
    await mesh.add_node("n1", 0.1, GatedExecutor())
    orchestrator = await mesh.orchestrator()
    try:
        job_id = orchestrator.submit(job())
        (contract,) = await orchestrator.place(job_id)

        assert await orchestrator.recovery.relocate(job_id, {"did:key:z6Mkother"}) == []
        record = orchestrator.jobs.get(job_id)
    finally:
        await orchestrator.stop()

    assert record.contracts == [contract]
    assert record.status == "running"
    assert relocations_of(record) == 0
