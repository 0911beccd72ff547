"""Paying for verified progress: a dropped contract's checkpoint earns its signed usage once
a verified result built on it, at that contract's rate, capped, once; otherwise a refund.

Real identities, signed checkpoints and results, and a real SqliteLedger; no mesh.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from computemesh.identity import Identity, document_digest
from computemesh.models.job import JobSpec
from computemesh.models.market import Checkpoint, ContractTerms, JobResult, ResourceUsage
from computemesh.orchestrator.outcome import Outcome
from computemesh.orchestrator.payments import Payments
from computemesh.orchestrator.progress import verified_progress
from computemesh.protocol.checkpoints import sign_checkpoint
from computemesh.protocol.results import sign_result
from computemesh.settlement import (
    LedgerSettings,
    SettlementError,
    Split,
    SqliteLedger,
    credits_to_units,
)
from computemesh.settlement.pricing import charge_for_usage

JOB_ID = "f" * 32
SPEC = JobSpec.model_validate({"name": "counter", "command": ["count", "9"]})
RATE = 3.6  # credits per CPU-hour: 1,000 units per CPU-second
MAX_CHARGE = 2.0


@dataclass
class Book:
    ledger: SqliteLedger
    payments: Payments
    consumer: Identity
    treasury: str


@pytest.fixture
def book(tmp_path: Path) -> Book:
    consumer, treasury = Identity.generate(), Identity.generate()
    ledger = SqliteLedger.open(
        tmp_path / "ledger.db", consumer, LedgerSettings(treasury=treasury.did)
    )
    ledger.deposit(consumer.did, credits_to_units(100), deposit_id="test-funds")
    return Book(ledger, Payments(ledger=ledger, verifier=consumer), consumer, treasury.did)


def contract(
    book: Book, provider: Identity, n: int, resume_from: str | None = None
) -> dict[str, Any]:
    terms = ContractTerms(
        contract_id=f"{n:032x}",
        job_id=JOB_ID,
        consumer=book.consumer.did,
        provider=provider.did,
        spec_sha256="0" * 64,
        price_per_cpu_hour=RATE,
        max_charge=MAX_CHARGE,
        created_at_ms=n,
        resume_from=resume_from,
    )
    book.payments.lock(terms, SPEC)
    return {"terms": terms.model_dump(mode="json")}


def checkpoint(provider: Identity, held: dict[str, Any], seq: int, cpu_s: float) -> dict[str, Any]:
    archive = f"{held['terms']['contract_id']}:{seq}".encode()
    body = Checkpoint(
        contract_id=held["terms"]["contract_id"],
        job_id=JOB_ID,
        provider=provider.did,
        seq=seq,
        sha256=hashlib.sha256(archive).hexdigest(),
        size=len(archive),
        created_at_ms=seq,
        usage=ResourceUsage(wall_s=cpu_s, cpu_s=cpu_s, max_rss_kb=0),
    )
    return sign_checkpoint(provider, body)


def result(provider: Identity, held: dict[str, Any], cpu_s: float) -> dict[str, Any]:
    body = JobResult(
        contract_id=held["terms"]["contract_id"],
        job_id=JOB_ID,
        provider=provider.did,
        status="completed",
        exit_code=0,
        stdout="45\n",
        stderr="",
        usage=ResourceUsage(wall_s=cpu_s, cpu_s=cpu_s, max_rss_kb=0),
        finished_at_ms=1,
    )
    return sign_result(provider, body)


def outcome(results: list[dict[str, Any]], *, verified: bool = True) -> Outcome:
    status = "completed" if verified else "failed"
    return Outcome(results=results, final=True, status=status, verified=verified, reason="")


def by_digest(*documents: dict[str, Any]) -> Any:
    table = {document["body"]["sha256"]: document for document in documents}
    return table.get


def provider_share(book: Book, amount: int) -> int:
    split: Split = book.ledger.split
    return split.shares(amount).provider


@dataclass
class Chain:
    """A job that lost two hosts: A checkpointed and died, B resumed from A's checkpoint,
    checkpointed and died, C resumed from B's checkpoint and finished."""

    providers: list[Identity]
    dropped: list[dict[str, Any]]
    held: dict[str, Any]
    checkpoints: list[dict[str, Any]]
    result: dict[str, Any]


@pytest.fixture
def chain(book: Book) -> Chain:
    a, b, c = (Identity.generate() for _ in range(3))
    first = contract(book, a, 1)
    a_early, a_late = checkpoint(a, first, 0, 10.0), checkpoint(a, first, 1, 20.0)
    second = contract(book, b, 2, resume_from=a_late["body"]["sha256"])
    b_late = checkpoint(b, second, 0, 30.0)
    third = contract(book, c, 3, resume_from=b_late["body"]["sha256"])
    return Chain([a, b, c], [first, second], third, [a_early, a_late, b_late], result(c, third, 5))


def test_the_checkpoints_a_verified_result_built_on_are_verified_progress(chain: Chain) -> None:
    _, a_late, b_late = chain.checkpoints
    progress = verified_progress(
        outcome([chain.result]), [chain.held], chain.dropped, by_digest(*chain.checkpoints)
    )
    first, second = (item["terms"]["contract_id"] for item in chain.dropped)
    # nothing resumed from A's first checkpoint, so only its second one counts
    assert progress == {first: a_late, second: b_late}


def test_nothing_is_verified_progress_unless_the_job_completed_verified(chain: Chain) -> None:
    documents = by_digest(*chain.checkpoints)
    failed = outcome([chain.result], verified=False)
    assert verified_progress(failed, [chain.held], chain.dropped, documents) == {}
    lost = Outcome([chain.result], True, "completed", True, "", lost=[_id(chain.held)])
    assert verified_progress(lost, [chain.held], chain.dropped, documents) == {}


def test_a_checkpoint_signed_by_someone_else_is_not_progress(book: Book, chain: Chain) -> None:
    stranger = Identity.generate()
    forged = checkpoint(stranger, chain.dropped[1], 0, 30.0)
    held = contract(book, chain.providers[2], 9, resume_from=forged["body"]["sha256"])
    documents = by_digest(*chain.checkpoints, forged)
    paid = outcome([result(chain.providers[2], held, 5)])
    assert verified_progress(paid, [held], chain.dropped, documents) == {}


def test_settling_pays_each_dropped_provider_its_checkpoint_once(book: Book, chain: Chain) -> None:
    documents = by_digest(*chain.checkpoints)
    receipts = book.payments.settle_job(
        [chain.held], chain.dropped, outcome([chain.result]), documents
    )
    again = book.payments.settle_job(
        [chain.held], chain.dropped, outcome([chain.result]), documents
    )

    assert [r.body["result_id"] for r in again] == [r.body["result_id"] for r in receipts]
    a, b, c = chain.providers
    terms = [ContractTerms.model_validate(item["terms"]) for item in chain.dropped]
    a_late, b_late = chain.checkpoints[1], chain.checkpoints[2]
    expected = {
        a.did: charge_for_usage(ResourceUsage(wall_s=20, cpu_s=20, max_rss_kb=0), terms[0]),
        b.did: charge_for_usage(ResourceUsage(wall_s=30, cpu_s=30, max_rss_kb=0), terms[1]),
        c.did: 5_000,
    }
    assert expected[a.did] == 20_000 and expected[b.did] == 30_000
    for provider in chain.providers:
        earned = book.ledger.balance(provider.did).available
        assert earned == provider_share(book, expected[provider.did])
    for item, document in zip(chain.dropped, (a_late, b_late), strict=True):
        escrow = book.ledger.escrow(_id(item))
        assert escrow.closed and escrow.refunded == escrow.locked - escrow.released
        (release,) = [r for r in receipts if r.body["contract_id"] == _id(item)]
        assert release.body["result_id"] == document_digest(document)
    consumer = book.ledger.balance(book.consumer.did)
    assert consumer.escrowed == 0
    assert consumer.available == credits_to_units(100) - sum(expected.values())


def test_a_checkpoint_is_paid_at_most_the_escrow(book: Book) -> None:
    old, new = Identity.generate(), Identity.generate()
    first = contract(book, old, 1)
    greedy = checkpoint(old, first, 0, 10 * 3600.0)  # ten CPU-hours against a 2-credit cap
    held = contract(book, new, 2, resume_from=greedy["body"]["sha256"])
    book.payments.settle_job([held], [first], outcome([result(new, held, 1)]), by_digest(greedy))
    escrow = book.ledger.escrow(_id(first))
    assert escrow.released == credits_to_units(MAX_CHARGE) and escrow.refunded == 0


def test_a_job_that_fails_midway_refunds_every_escrow(book: Book, chain: Chain) -> None:
    failed = Outcome([], True, "failed", False, "relocated too many times")
    book.payments.settle_job([chain.held], chain.dropped, failed, by_digest(*chain.checkpoints))
    for item in [*chain.dropped, chain.held]:
        escrow = book.ledger.escrow(_id(item))
        assert escrow.closed and escrow.released == 0 and escrow.refunded == escrow.locked
    assert book.ledger.balance(book.consumer.did).available == credits_to_units(100)
    for provider in chain.providers:
        assert book.ledger.balance(provider.did).available == 0


def test_a_checkpoint_of_another_contract_is_refused(book: Book, chain: Chain) -> None:
    terms = ContractTerms.model_validate(chain.dropped[0]["terms"])
    with pytest.raises(SettlementError) as refused:
        book.payments.release_checkpoint(terms, chain.checkpoints[2])
    assert refused.value.code == "unverified_result"
    assert not book.ledger.escrow(terms.contract_id).closed


def test_a_settled_escrow_is_not_paid_again_by_a_later_checkpoint(book: Book, chain: Chain) -> None:
    first = chain.dropped[0]
    book.payments.refund(_id(first))
    progress = {_id(first): chain.checkpoints[1]}
    assert book.payments.settle_superseded([first], progress) == []
    assert book.ledger.balance(chain.providers[0].did).available == 0


def _id(item: dict[str, Any]) -> str:
    return str(item["terms"]["contract_id"])
