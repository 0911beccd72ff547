"""`cmesh demo`'s payments: per provider and in total, from a small embedded ledger."""

from __future__ import annotations

import os
from pathlib import Path

from computemesh.app.demo import DemoReport, summarize_payments
from computemesh.identity import Identity
from computemesh.settlement import EscrowTerms, LedgerSettings, SqliteLedger, attest_result

CREDIT = 1_000_000


def test_payments_per_provider_treasury_creators_and_consumer(tmp_path: Path) -> None:
    consumer, treasury, creator = Identity.generate(), Identity.generate(), Identity.generate()
    alice, bob, idle = (Identity.generate().did for _ in range(3))
    ledger = SqliteLedger.open(tmp_path / "ledger.db", consumer, LedgerSettings(treasury.did))
    ledger.deposit(consumer.did, 20 * CREDIT, deposit_id="faucet")

    def lock(provider: str, credits: int, model_creator: str | None = None) -> str:
        terms = EscrowTerms(
            contract_id=os.urandom(16).hex(),
            job_id=os.urandom(16).hex(),
            consumer=consumer.did,
            provider=provider,
            amount=credits * CREDIT,
            creator=model_creator,
        )
        ledger.lock(terms)
        return terms.contract_id

    def release(contract_id: str, amount: int, *, final: bool = True) -> None:
        result_id = os.urandom(32).hex()
        ledger.release(
            attest_result(
                consumer, contract_id=contract_id, result_id=result_id, amount=amount, final=final
            )
        )

    paid_alice, checkpointed_alice = lock(alice, 2), lock(alice, 3, creator.did)
    paid_bob, refunded_bob, other_job = lock(bob, 1), lock(bob, 4), lock(bob, 5)
    release(paid_alice, 1_000_000)
    release(checkpointed_alice, 400_000, final=False)
    release(checkpointed_alice, 600_000)
    release(paid_bob, 250_000)
    ledger.refund(refunded_bob)
    release(other_job, 5 * CREDIT)

    ours = {paid_alice, checkpointed_alice, paid_bob, refunded_bob}
    payments = summarize_payments(ledger.history(consumer.did), ours, [alice, bob, idle])

    assert payments["providers"] == [
        {"did": alice, "jobs_paid": 2, "earned": 800_000 + 320_000 + 480_000},
        {"did": bob, "jobs_paid": 1, "earned": 200_000},
        {"did": idle, "jobs_paid": 0, "earned": 0},
    ]
    assert payments["locked"] == 10 * CREDIT
    assert payments["paid"] == 2_250_000
    assert (
        payments["refunded"]
        == (2 * CREDIT - 1_000_000) + (3 * CREDIT - 1_000_000) + (1 * CREDIT - 250_000) + 4 * CREDIT
    )
    assert payments["creators"] == 20_000 + 30_000
    assert payments["treasury"] == 150_000 + 60_000 + 90_000 + 37_500 + 50_000 + 12_500
    assert payments["paid"] == sum(row["earned"] for row in payments["providers"]) + (
        payments["treasury"] + payments["creators"]
    )
    assert payments["units_per_credit"] == CREDIT
    report = DemoReport(nodes=3, payments=payments)
    assert report.summary()["payments"] == payments
