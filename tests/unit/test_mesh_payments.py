"""Payments in the job flow on the in-memory mesh: real nodes, orchestrator and SqliteLedger.

Escrow is locked before the commit, refunded when the commit is refused or the job fails,
and a verified job pays its provider exactly the split of the price of its signed usage,
once, however often its result arrives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from computemesh.actor import Actor
from computemesh.executor import ExecutionResult
from computemesh.identity import Identity
from computemesh.models.job import JobSpec
from computemesh.models.market import ContractTerms, Hardware, JobResult, ResourceUsage
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.settlement import LedgerSettings, SqliteLedger, attest_result, credits_to_units
from computemesh.settlement.pricing import charge_for_usage
from computemesh.store import AllocationRepository, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from tests.fakes import FakeExecutor, FakeHandle

FAST = OrchestratorSettings(bid_window_s=0.3, placement_timeout_s=0.5, fetch_interval_s=0.5)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)
CPU_SECONDS = 36.0
DEPOSIT = credits_to_units(10)


@dataclass
class MeteredExecutor(FakeExecutor):
    """FakeExecutor whose runs report ``cpu_s`` seconds of CPU."""

    cpu_s: float = CPU_SECONDS

    async def wait(self, handle: FakeHandle) -> ExecutionResult:
        ended = await super().wait(handle)
        usage = ResourceUsage(wall_s=self.cpu_s, cpu_s=self.cpu_s, max_rss_kb=2048)
        return dataclasses.replace(ended, usage=usage)


@dataclass
class PaidMesh:
    hub: MemoryHub
    ledger: SqliteLedger
    consumer: Identity
    treasury: str
    nodes: list[ProviderNode]
    orchestrator: Orchestrator


def make_node(hub: MemoryHub, home: Path, price: float, ledger_path: Path) -> ProviderNode:
    identity = Identity.generate()
    return ProviderNode(
        actor=Actor(identity=identity, transport=MemoryTransport(hub)),
        settings=NodeSettings(home=home, region="eu-west", price_per_cpu_hour=price),
        hardware=HARDWARE,
        allocations=AllocationRepository(open_database("sqlite://")),
        executors={"process": MeteredExecutor()},
        settlement=SqliteLedger.open(ledger_path, identity),
    )


@pytest.fixture
async def paid(tmp_path: Path) -> AsyncIterator[PaidMesh]:
    hub = MemoryHub()
    consumer, treasury = Identity.generate(), Identity.generate()
    ledger_path = tmp_path / "ledger.db"
    ledger = SqliteLedger.open(ledger_path, consumer, LedgerSettings(treasury=treasury.did))
    ledger.deposit(consumer.did, DEPOSIT, deposit_id="test-funds")
    nodes = [make_node(hub, tmp_path / "n1", 0.1, ledger_path)]
    for node in nodes:
        await node.start()
    orchestrator = Orchestrator(
        actor=Actor(identity=consumer, transport=MemoryTransport(hub)),
        jobs=JobRepository(open_database("sqlite://")),
        settings=FAST,
        ledger=ledger,
    )
    await orchestrator.start()
    await orchestrator.discover(window_s=0.2)
    yield PaidMesh(hub, ledger, consumer, treasury.did, nodes, orchestrator)
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


def only_contract(paid: PaidMesh, job_id: str) -> ContractTerms:
    (contract,) = paid.orchestrator.jobs.get(job_id).contracts
    return ContractTerms.model_validate(contract["terms"])


async def test_verified_job_pays_the_split_of_its_usage_and_refunds_the_rest(
    paid: PaidMesh,
) -> None:
    record = await paid.orchestrator.run(job(), timeout=5)
    assert (record.status, record.verified) == ("completed", True)
    terms = only_contract(paid, record.job_id)
    (document,) = record.results
    usage = JobResult.model_validate(document["body"]).usage
    price = charge_for_usage(usage, terms)
    assert price == 1000  # 0.1 credits per cpu-hour x 36 cpu-seconds
    shares = paid.ledger.split.shares(price)
    provider = paid.nodes[0].did
    assert paid.ledger.balance(provider).available == shares.provider == 800
    assert paid.ledger.balance(paid.treasury).available == shares.treasury + shares.creator
    assert paid.ledger.balance(paid.consumer.did).available == DEPOSIT - price
    escrow = paid.ledger.escrow(terms.contract_id)
    assert escrow.closed
    assert (escrow.locked, escrow.released) == (credits_to_units(terms.max_charge), price)
    assert escrow.refunded == escrow.locked - price
    assert paid.ledger.verify().ok


async def test_a_result_accepted_twice_is_paid_once(paid: PaidMesh) -> None:
    record = await paid.orchestrator.run(job(), timeout=5)
    (document,) = record.results
    before = {did: paid.ledger.balance(did) for did in (paid.nodes[0].did, paid.treasury)}
    entries = paid.ledger.verify().entries
    paid.orchestrator.accept_result(record.job_id, document)
    paid.orchestrator.accept_result(record.job_id, document)
    assert {did: paid.ledger.balance(did) for did in before} == before
    assert paid.ledger.verify().entries == entries
    assert paid.orchestrator.payments is not None
    terms = only_contract(paid, record.job_id)
    first = paid.orchestrator.payments.release_verified(terms, document)
    again = paid.orchestrator.payments.release_verified(terms, document)
    assert first.document == again.document
    releases = [r for r in paid.ledger.history(paid.nodes[0].did) if r.op == "release"]
    assert len(releases) == 1


async def test_failed_job_is_refunded_in_full(paid: PaidMesh) -> None:
    executor = paid.nodes[0].executors["process"]
    assert isinstance(executor, MeteredExecutor)
    executor.behaviour = lambda request: (3, b"", {})
    record = await paid.orchestrator.run(job(), timeout=5)
    assert record.status == "failed"
    terms = only_contract(paid, record.job_id)
    escrow = paid.ledger.escrow(terms.contract_id)
    assert escrow.closed and escrow.released == 0 and escrow.refunded == escrow.locked
    assert paid.ledger.balance(paid.nodes[0].did).available == 0
    assert paid.ledger.balance(paid.consumer.did).available == DEPOSIT


async def test_refused_commit_is_refunded_at_once(paid: PaidMesh, tmp_path: Path) -> None:
    # A node that checks escrow on another ledger finds none and refuses the contract.
    elsewhere = tmp_path / "elsewhere.db"
    SqliteLedger.open(elsewhere, Identity.generate(), LedgerSettings(treasury=paid.treasury))
    stranger = make_node(paid.hub, tmp_path / "n2", 0.1, elsewhere)
    await paid.nodes[0].stop()
    await stranger.start()
    try:
        paid.orchestrator.known_nodes.clear()
        await paid.orchestrator.discover(window_s=0.2)
        record = await paid.orchestrator.run(job(), timeout=5)
    finally:
        await stranger.stop()
    assert record.status == "no_provider"
    assert "no escrow is locked" in record.reason
    locks = [r for r in paid.ledger.history(paid.consumer.did) if r.op == "lock"]
    assert locks  # one per placement attempt: the queue retries while the stopped node is silent
    for lock in locks:
        escrow = paid.ledger.escrow(lock.body["contract_id"])
        assert escrow.closed and escrow.refunded == escrow.locked and escrow.released == 0
    assert paid.ledger.balance(paid.consumer.did).available == DEPOSIT
    assert paid.ledger.balance(paid.consumer.did).escrowed == 0


async def test_a_consumer_without_funds_contracts_nothing(paid: PaidMesh) -> None:
    poor = job(resources={"cpu": 1.0}, timeout_s=7 * 24 * 3600)  # max_charge above DEPOSIT
    record = await paid.orchestrator.run(poor, timeout=5)
    assert record.status == "no_provider"
    assert "insufficient" in record.reason or "needs more than" in record.reason
    assert record.contracts == []
    assert paid.nodes[0].allocations.unfinished() == []


async def test_checkpoint_is_paid_and_refund_returns_only_the_rest(paid: PaidMesh) -> None:
    record = await paid.orchestrator.run(job(timeout_s=3600), timeout=5)
    assert paid.orchestrator.payments is not None
    payments = paid.orchestrator.payments
    # A second contract, paid one checkpoint then refunded (a job failing midway).
    spec = job(timeout_s=3600)
    terms = only_contract(paid, record.job_id).model_copy(
        update={"contract_id": "ab" * 16, "job_id": "cd" * 16}
    )
    payments.lock(terms, spec)
    checkpoint_id = "c" * 64
    paid_receipt = paid.ledger.release(
        attest_result(
            paid.consumer,
            contract_id=terms.contract_id,
            result_id=checkpoint_id,
            amount=400,
            final=False,
        )
    )
    refund = payments.refund(terms.contract_id)
    assert refund is not None
    locked = credits_to_units(terms.max_charge)
    assert (paid_receipt.amount, refund.refund) == (400, locked - 400)
    assert payments.refund(terms.contract_id) is not None  # the same refund, replayed
    assert paid.ledger.escrow(terms.contract_id).refunded == locked - 400
