"""Cancelling allocations on the in-memory mesh: real nodes, orchestrator and SqliteLedger.

The consumer asks the node to stop a running allocation: the run is stopped, its capacity
freed, it ends with a signed ``killed`` result, and the escrow is refunded. Cancelling again
answers the same state; nobody but the contract's consumer may cancel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from computemesh.actor import Actor, Inbound, behaviours
from computemesh.executor import ExecutionRequest, ExecutionResult
from computemesh.identity import Identity
from computemesh.models.ensemble import EnsembleSpec
from computemesh.models.errors import MeshError, RemoteError
from computemesh.models.job import JobSpec
from computemesh.models.market import ContractTerms, Hardware
from computemesh.node.provider import CANCELLED_REASON, ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.protocol import verify_result
from computemesh.settlement import LedgerSettings, SqliteLedger, credits_to_units
from computemesh.store import AllocationRepository, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from tests.fakes import FakeExecutor, FakeHandle

pytestmark = pytest.mark.timeout(60)

FAST = OrchestratorSettings(bid_window_s=0.2, placement_timeout_s=1.0, fetch_interval_s=0.3)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)
DEPOSIT = credits_to_units(10)


@dataclass
class GatedExecutor(FakeExecutor):
    """A fake whose runs finish only once ``gate`` is set; remembers the handles it stopped."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    handles: list[FakeHandle] = field(default_factory=list)

    async def prepare(self, request: ExecutionRequest, work_root: Path) -> FakeHandle:
        handle = await super().prepare(request, work_root)
        self.handles.append(handle)
        return handle

    async def wait(self, handle: FakeHandle) -> ExecutionResult:
        await self.gate.wait()
        return await super().wait(handle)


class CommitRefusingNode(ProviderNode):
    """Bids like any node, then refuses every contract."""

    async def on_commit(self, inbound: Inbound) -> dict[str, Any]:
        raise MeshError("this node changed its mind", code="cannot_run")


class SlowCommitNode(ProviderNode):
    """Holds every commit until ``proceed`` is set (``committing`` says one is held)."""

    def __init__(self, **parts: Any) -> None:
        super().__init__(**parts)
        self.committing = asyncio.Event()
        self.proceed = asyncio.Event()

    async def on_commit(self, inbound: Inbound) -> dict[str, Any]:
        self.committing.set()
        await self.proceed.wait()
        return await super().on_commit(inbound)


def make_node(
    hub: MemoryHub, home: Path, executor: FakeExecutor, kind: type[ProviderNode] = ProviderNode
) -> ProviderNode:
    provider = Identity.generate()
    return kind(
        actor=Actor(identity=provider, transport=MemoryTransport(hub)),
        settings=NodeSettings(home=home, region="eu-west", price_per_cpu_hour=0.1),
        hardware=HARDWARE,
        allocations=AllocationRepository(open_database("sqlite://")),
        executors={"process": executor},
        settlement=SqliteLedger.open(home.parent / "ledger.db", provider),
    )


@dataclass
class Mesh:
    hub: MemoryHub
    ledger: SqliteLedger
    consumer: Identity
    node: ProviderNode
    executor: GatedExecutor
    orchestrator: Orchestrator
    tmp_path: Path


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    hub = MemoryHub()
    consumer, treasury = Identity.generate(), Identity.generate()
    ledger = SqliteLedger.open(
        tmp_path / "ledger.db", consumer, LedgerSettings(treasury=treasury.did)
    )
    ledger.deposit(consumer.did, DEPOSIT, deposit_id="test-funds")
    executor = GatedExecutor()
    node = make_node(hub, tmp_path / "n1", executor)
    await node.start()
    orchestrator = Orchestrator(
        actor=Actor(identity=consumer, transport=MemoryTransport(hub)),
        jobs=JobRepository(open_database("sqlite://")),
        settings=FAST,
        ledger=ledger,
    )
    await orchestrator.start()
    await orchestrator.discover(window_s=0.1)
    yield Mesh(hub, ledger, consumer, node, executor, orchestrator, tmp_path)
    executor.gate.set()
    await orchestrator.stop()
    await node.stop()


def job(name: str = "long") -> JobSpec:
    data = {
        "name": name,
        "command": ["cat", "in.txt"],
        "inputs": [{"path": "in.txt", "content": "hello"}],
        "outputs": ["out.txt"],
        "resources": {"cpu": 1.0, "memory_mb": 1024},
        "timeout_s": 600,
    }
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


async def eventually(check: Callable[[], bool], step_s: float = 0.05) -> None:
    """Until ``check()`` holds (the test's timeout bounds the wait)."""
    while True:
        if check():
            return
        await asyncio.sleep(step_s)


async def running_job(mesh: Mesh) -> tuple[str, str]:
    """A job placed on the node and running there: its id and contract id."""
    job_id = mesh.orchestrator.submit(job())
    (contract,) = await mesh.orchestrator.place(job_id)
    await eventually(lambda: bool(mesh.executor.handles))
    return job_id, contract["terms"]["contract_id"]


async def test_cancel_stops_the_run_frees_capacity_and_refunds(mesh: Mesh) -> None:
    job_id, contract_id = await running_job(mesh)
    assert mesh.node.ledger.running == 1
    assert mesh.ledger.balance(mesh.consumer.did).escrowed > 0

    (cancelled,) = await mesh.orchestrator.cancel(job_id)

    assert (cancelled.contract_id, cancelled.state, cancelled.refunded) == (
        contract_id,
        "killed",
        True,
    )
    (handle,) = mesh.executor.handles
    assert handle.stopped
    assert mesh.node.ledger.running == 0
    allocation = mesh.node.allocations.get(contract_id)
    assert allocation is not None and allocation.status == "finished"
    assert allocation.result is not None
    record = mesh.orchestrator.jobs.get(job_id)
    terms = ContractTerms.model_validate(record.contracts[0]["terms"])
    signed = verify_result(allocation.result, terms=terms, spec=job())
    assert (signed.status, signed.reason) == ("killed", CANCELLED_REASON)
    assert (record.status, record.reason) == ("failed", "cancelled by the consumer")
    assert [entry["event"] for entry in record.history][-2:] == ["failed", "cancelled"]
    escrow = mesh.ledger.escrow(contract_id)
    assert escrow.closed and escrow.released == 0 and escrow.refunded == escrow.locked
    assert mesh.ledger.balance(mesh.consumer.did).available == DEPOSIT
    assert mesh.ledger.balance(mesh.node.did).available == 0


async def test_cancelling_again_answers_the_same_state_and_moves_nothing(mesh: Mesh) -> None:
    job_id, contract_id = await running_job(mesh)
    await mesh.orchestrator.cancel(job_id)
    entries = mesh.ledger.verify().entries

    (again,) = await mesh.orchestrator.cancel(job_id, contract_id)

    assert (again.state, again.refunded) == ("killed", True)
    assert mesh.ledger.verify().entries == entries
    assert mesh.ledger.balance(mesh.consumer.did).available == DEPOSIT
    assert mesh.orchestrator.jobs.get(job_id).status == "failed"


async def test_a_finished_allocation_answers_its_result_and_stays_settled(mesh: Mesh) -> None:
    mesh.executor.gate.set()
    record = await mesh.orchestrator.run(job(), timeout=5)
    assert (record.status, record.verified) == ("completed", True)
    entries = mesh.ledger.verify().entries

    (cancelled,) = await mesh.orchestrator.cancel(record.job_id)

    assert (cancelled.state, cancelled.refunded) == ("completed", False)
    after = mesh.orchestrator.jobs.get(record.job_id)
    assert (after.status, after.verified) == ("completed", True)
    assert mesh.ledger.verify().entries == entries  # settled by the result; nothing moved


async def test_only_the_contracts_consumer_may_cancel(mesh: Mesh) -> None:
    _, contract_id = await running_job(mesh)
    stranger = Actor(identity=Identity.generate(), transport=MemoryTransport(mesh.hub))
    await stranger.start()
    try:
        with pytest.raises(RemoteError) as refused:
            await stranger.request(
                mesh.node.did, behaviours.CANCEL, {"contract_id": contract_id}, timeout=2
            )
    finally:
        await stranger.stop()
    assert refused.value.code == "unknown_allocation"
    allocation = mesh.node.allocations.get(contract_id)
    assert allocation is not None and allocation.status == "running"
    assert not mesh.executor.handles[0].stopped


async def test_unknown_allocations_and_contracts_are_refused_by_code(mesh: Mesh) -> None:
    job_id, _ = await running_job(mesh)
    with pytest.raises(MeshError) as unknown:
        await mesh.orchestrator.cancel(job_id, "ef" * 16)
    assert unknown.value.code == "unknown_contract"
    for payload in ({"contract_id": "ef" * 16}, {"contract_id": 7}, {}):
        with pytest.raises(RemoteError) as refused:
            await mesh.orchestrator.actor.request(
                mesh.node.did, behaviours.CANCEL, payload, timeout=2
            )
        assert refused.value.code == "unknown_allocation"
    assert mesh.orchestrator.jobs.get(job_id).status == "running"


async def test_a_failed_ensemble_cancels_the_partners_already_countersigned(mesh: Mesh) -> None:
    partner = GatedExecutor()
    others = [
        make_node(mesh.hub, mesh.tmp_path / "n2", partner),
        make_node(mesh.hub, mesh.tmp_path / "n3", FakeExecutor(), CommitRefusingNode),
    ]
    for node in others:
        await node.start()
    try:
        await mesh.orchestrator.discover(window_s=0.1)
        names = ["a", "b", "c"]
        ensemble = EnsembleSpec(name="trio", allocations=[job(n) for n in names], spread=[names])
        outcome = await mesh.orchestrator.deploy_ensemble(ensemble, timeout=10)
    finally:
        for node in others:
            await node.stop()

    assert outcome.status == "failed"
    assert "changed its mind" in outcome.reason
    countersigned = [c for r in outcome.records.values() for c in r.contracts]
    assert len(countersigned) == 2  # both partners signed before the third refused
    for record in outcome.records.values():
        assert record.status == "failed" and record.reason.startswith("ensemble not placed")
    for handle in [*mesh.executor.handles, *partner.handles]:
        assert handle.stopped
    for contract in countersigned:
        escrow = mesh.ledger.escrow(contract["terms"]["contract_id"])
        assert escrow.closed and escrow.refunded == escrow.locked
    assert mesh.ledger.balance(mesh.consumer.did).available == DEPOSIT
    assert mesh.orchestrator.view.promised() == {}


async def test_a_job_cancelled_while_its_commit_is_in_flight_stays_cancelled(
    mesh: Mesh,
) -> None:
    await mesh.node.stop()
    slow_executor = GatedExecutor()
    slow = make_node(mesh.hub, mesh.tmp_path / "slow", slow_executor, SlowCommitNode)
    assert isinstance(slow, SlowCommitNode)
    await slow.start()
    try:
        await eventually(lambda: slow.did in mesh.orchestrator.known_nodes)
        job_id = mesh.orchestrator.submit(job())
        placing = asyncio.create_task(mesh.orchestrator.place(job_id))
        await slow.committing.wait()
        assert await mesh.orchestrator.cancel(job_id) == []  # nothing countersigned yet
        slow.proceed.set()
        (contract,) = await placing
        await eventually(lambda: bool(slow_executor.handles) and slow_executor.handles[0].stopped)
    finally:
        await slow.stop()

    record = mesh.orchestrator.jobs.get(job_id)
    assert (record.status, record.reason) == ("failed", "cancelled by the consumer")
    allocation = slow.allocations.get(contract["terms"]["contract_id"])
    assert allocation is not None and allocation.result is not None
    assert allocation.result["body"]["status"] == "killed"
    escrow = mesh.ledger.escrow(contract["terms"]["contract_id"])
    assert escrow.closed and escrow.refunded == escrow.locked
