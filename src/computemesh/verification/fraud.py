"""Fraud records: a signed result a quorum proved wrong, with the evidence and the verdict.

A fraud record holds the losing result, the winning results it was compared with (each a
document signed by its provider, so anyone can re-check them) and the verdict, a
``fraud-verdict`` document signed by the consumer that judged them. Settlement is told
through a ``FraudSink`` callback, so verification works with or without a ledger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from computemesh.identity import Identity, document_digest, sign_document, verify_document
from computemesh.models.errors import IdentityError, MeshError, VerificationError
from computemesh.settlement.ledger import Ledger
from computemesh.settlement.records import record_fraud

FRAUD_VERDICT_KIND = "fraud-verdict"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FraudFinding:
    """Everything that proves one provider's result wrong."""

    job_id: str
    contract_id: str
    provider: str
    executor: str
    losing_result: dict[str, Any]
    winning_results: tuple[dict[str, Any], ...]
    verdict: dict[str, Any]

    @property
    def evidence(self) -> tuple[str, ...]:
        """Digests of the signed results involved, the losing one first."""
        return tuple(
            document_digest(document) for document in (self.losing_result, *self.winning_results)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "contract_id": self.contract_id,
            "provider": self.provider,
            "executor": self.executor,
            "losing_result": self.losing_result,
            "winning_results": list(self.winning_results),
            "verdict": self.verdict,
        }


FraudSink = Callable[[FraudFinding], None]
"""Told of each proven fraud once it is stored; must not raise (log instead)."""


def judge_fraud(
    judge: Identity,
    *,
    job_id: str,
    executor: str,
    losing_result: dict[str, Any],
    winning_results: Sequence[dict[str, Any]],
    reason: str,
) -> FraudFinding:
    """A finding against the signer of ``losing_result``, its verdict signed by ``judge``."""
    body = losing_result["body"]
    verdict_body = {
        "job_id": job_id,
        "contract_id": body["contract_id"],
        "provider": body["provider"],
        "losing_result": document_digest(losing_result),
        "winning_results": [document_digest(document) for document in winning_results],
        "reason": reason,
        "decided_at_ms": int(time.time() * 1000),
    }
    return FraudFinding(
        job_id=job_id,
        contract_id=body["contract_id"],
        provider=body["provider"],
        executor=executor,
        losing_result=losing_result,
        winning_results=tuple(winning_results),
        verdict=sign_document(judge, FRAUD_VERDICT_KIND, verdict_body),
    )


def check_fraud_finding(finding: FraudFinding) -> dict[str, Any]:
    """The verdict's body, once it and every result it names are proven.

    Raises ``VerificationError`` (``bad_fraud_record``) when the verdict's signature fails,
    or it names other results than the ones held, or a result's signature fails.
    """
    try:
        body = verify_document(finding.verdict, kind=FRAUD_VERDICT_KIND)
        for document in (finding.losing_result, *finding.winning_results):
            verify_document(document, kind="job-result")
    except IdentityError as exc:
        raise VerificationError(f"fraud record: {exc.message}", code="bad_fraud_record") from exc
    named = [body.get("losing_result"), *body.get("winning_results", [])]
    if named != list(finding.evidence) or body.get("provider") != finding.provider:
        raise VerificationError(
            "fraud record: the verdict names other results", code="bad_fraud_record"
        )
    return body


def slash_through_ledger(ledger: Ledger, arbiter: Identity, *, amount: int) -> FraudSink:
    """A sink that records the fraud in settlement and slashes up to ``amount`` of stake.

    ``ledger``'s arbiters must include ``arbiter``. A provider with less stake loses what it
    has; one with none is only logged. A slash the ledger refuses (``arbiter`` is not one of
    its arbiters, say) is logged; the finding stays stored and the provider stays excluded.
    """

    def sink(finding: FraudFinding) -> None:
        try:
            staked = ledger.balance(finding.provider).staked
            if staked <= 0:
                log.info("%s has no stake to slash", finding.provider)
                return
            record = record_fraud(
                arbiter,
                fraud_id=f"fraud:{finding.job_id}:{finding.contract_id}",
                provider=finding.provider,
                contract_id=finding.contract_id,
                evidence=list(finding.evidence),
                amount=min(amount, staked),
            )
            receipt = ledger.slash(record)
        except MeshError as exc:
            log.warning("could not slash %s: %s", finding.provider, exc)
            return
        log.warning("%s slashed %d units of stake", finding.provider, receipt.amount)

    return sink
