"""Escrow a killed consumer left open is settled by the next session's recovery pass, once.

A consumer SIGKILLed between locking an escrow and storing its contract, or between
recording a job's outcome and settling it, leaves an escrow nobody closes. These tests put
the store and the ledger in exactly those states (a real SqliteLedger, real nodes and
orchestrator on the in-memory mesh) and run recovery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from computemesh.actor import Actor
from computemesh.identity import Identity
from computemesh.models.job import JobSpec
from computemesh.models.market import ContractTerms, Hardware, JobResult
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.settlement import LedgerSettings, SqliteLedger, credits_to_units
from computemesh.settlement.pricing import charge_for_usage
from computemesh.store import AllocationRepository, JobRecord, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from tests.fakes import FakeExecutor

pytestmark = pytest.mark.timeout(60)

FAST = OrchestratorSettings(bid_window_s=0.2, placement_timeout_s=0.5, fetch_interval_s=0.3)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)
DEPOSIT = credits_to_units(10)


@dataclass
class Paid:
    ledger: SqliteLedger
    consumer: Identity
    orchestrator: Orchestrator


@pytest.fixture
async def paid(tmp_path: Path) -> AsyncIterator[Paid]:
    hub = MemoryHub()
    consumer, treasury, provider = Identity.generate(), Identity.generate(), Identity.generate()
    ledger = SqliteLedger.open(
        tmp_path / "ledger.db", consumer, LedgerSettings(treasury=treasury.did)
    )
    ledger.deposit(consumer.did, DEPOSIT, deposit_id="test-funds")
    node = ProviderNode(
        actor=Actor(identity=provider, transport=MemoryTransport(hub)),
        settings=NodeSettings(home=tmp_path / "node", region="eu-west", price_per_cpu_hour=36.0),
        hardware=HARDWARE,
        allocations=AllocationRepository(open_database("sqlite://")),
        executors={"process": FakeExecutor()},
        settlement=SqliteLedger.open(tmp_path / "ledger.db", provider),
    )
    await node.start()
    orchestrator = Orchestrator(
        actor=Actor(identity=consumer, transport=MemoryTransport(hub)),
        jobs=JobRepository(open_database("sqlite://")),
        settings=FAST,
        ledger=ledger,
    )
    await orchestrator.start()
    await orchestrator.discover(window_s=0.2)
    yield Paid(ledger, consumer, orchestrator)
    await orchestrator.stop()
    await node.stop()


def job() -> JobSpec:
    data = {"name": "echo", "command": ["echo", "hi"]}
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


def only_terms(record: JobRecord) -> ContractTerms:
    (contract,) = record.contracts
    return ContractTerms.model_validate(contract["terms"])


def releases(paid: Paid, contract_id: str) -> int:
    return sum(
        1
        for receipt in paid.ledger.history(paid.consumer.did)
        if receipt.op == "release" and receipt.body["contract_id"] == contract_id
    )


async def test_an_escrow_locked_for_a_contract_never_stored_is_refunded(paid: Paid) -> None:
    record = await paid.orchestrator.run(job(), timeout=5)
    assert record.status == "completed"
    spent = DEPOSIT - paid.ledger.balance(paid.consumer.did).available
    # What a session killed after the lock and before storing the contract leaves behind.
    orphan = only_terms(record).model_copy(update={"contract_id": "0" * 32})
    assert paid.orchestrator.payments is not None
    paid.orchestrator.payments.lock(orphan, job())
    assert paid.ledger.balance(paid.consumer.did).escrowed == credits_to_units(orphan.max_charge)

    report = await paid.orchestrator.recovery.recover()

    assert report.settled == [orphan.contract_id]
    escrow = paid.ledger.escrow(orphan.contract_id)
    assert escrow.closed and escrow.released == 0 and escrow.refunded == escrow.locked
    balance = paid.ledger.balance(paid.consumer.did)
    assert (balance.escrowed, balance.available) == (0, DEPOSIT - spent)
    assert paid.ledger.verify().ok


async def test_a_job_recorded_final_but_never_settled_is_paid_once(
    paid: Paid, monkeypatch: pytest.MonkeyPatch
) -> None:
    payments = paid.orchestrator.payments
    assert payments is not None
    # The session dies between recording the outcome and settling it.
    with monkeypatch.context() as crash:
        crash.setattr(payments, "settle_outcome", lambda contracts, outcome: [])
        record = await paid.orchestrator.run(job(), timeout=5)
    terms = only_terms(record)
    assert (record.status, record.verified) == ("completed", True)
    assert not paid.ledger.escrow(terms.contract_id).closed

    first = await paid.orchestrator.recovery.recover()
    again = await paid.orchestrator.recovery.recover()

    assert (first.settled, again.settled) == ([terms.contract_id], [])
    usage = JobResult.model_validate(record.results[0]["body"]).usage
    price = charge_for_usage(usage, terms)
    escrow = paid.ledger.escrow(terms.contract_id)
    assert price > 0
    assert escrow.closed and escrow.released == price
    assert releases(paid, terms.contract_id) == 1
    assert paid.ledger.balance(paid.consumer.did).escrowed == 0


async def test_an_open_escrow_of_an_unfinished_job_is_left_alone(paid: Paid) -> None:
    record = await paid.orchestrator.run(job(), timeout=5)
    pending = paid.orchestrator.submit(job())
    waiting = only_terms(record).model_copy(update={"contract_id": "1" * 32, "job_id": pending})
    assert paid.orchestrator.payments is not None
    paid.orchestrator.payments.lock(waiting, job())

    assert paid.orchestrator.recovery.settle_leftover_escrows() == []
    assert not paid.ledger.escrow(waiting.contract_id).closed
