"""What goes into a ledger and what comes out: escrow terms, verified results, fraud records,
balances and escrow states.

Inputs that grant money carry a signature of whoever vouches for them, checked by every
backend before anything moves:

- a ``VerifiedResult`` carries a ``verified-result`` document signed by the verifier (the
  contract's consumer, or a verifier the network trusts) over exactly its fields;
- a ``FraudRecord`` carries a ``fraud-record`` document signed by an arbiter.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from computemesh.identity import Identity, canonical_json, sign_document, verify_document
from computemesh.models.errors import IdentityError
from computemesh.models.market import ContractTerms
from computemesh.settlement.amounts import check_amount, credits_to_units
from computemesh.settlement.errors import SettlementError

VERIFIED_RESULT_KIND = "verified-result"
FRAUD_RECORD_KIND = "fraud-record"

CONTRACT_ID = re.compile(r"^[0-9a-f]{32}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")
OPERATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
DID = re.compile(r"^did:key:z[1-9A-HJ-NP-Za-km-z]+$")


def check_contract_id(value: object) -> str:
    if not isinstance(value, str) or not CONTRACT_ID.fullmatch(value):
        raise SettlementError(f"not a contract id: {value!r}", code="bad_id")
    return value


def check_digest(value: object, *, what: str) -> str:
    if not isinstance(value, str) or not DIGEST.fullmatch(value):
        raise SettlementError(f"{what} is not 64 lowercase hex digits: {value!r}", code="bad_id")
    return value


def check_operation_id(value: object, *, what: str) -> str:
    """An idempotency key chosen by the caller: 1-128 of ``A-Z a-z 0-9 . _ : -``."""
    if not isinstance(value, str) or not OPERATION_ID.fullmatch(value):
        raise SettlementError(f"{what} is not a valid id: {value!r}", code="bad_id")
    return value


def check_did(value: object, *, what: str = "DID") -> str:
    if not isinstance(value, str) or not DID.fullmatch(value) or len(value) > 128:
        raise SettlementError(f"{what} is not a did:key: {value!r}", code="bad_id")
    return value


@dataclass(frozen=True)
class EscrowTerms:
    """Escrow to lock for one contract: ``amount`` units of the consumer's, for the provider.

    ``creator`` is the model creator's DID; with none, the creator's share goes to the
    treasury. ``amount`` is the most the contract may pay (its ``max_charge``).
    """

    contract_id: str
    job_id: str
    consumer: str
    provider: str
    amount: int
    creator: str | None = None

    def __post_init__(self) -> None:
        check_contract_id(self.contract_id)
        check_contract_id(self.job_id)
        check_did(self.consumer, what="consumer")
        check_did(self.provider, what="provider")
        if self.creator is not None:
            check_did(self.creator, what="creator")
        check_amount(self.amount, what="escrow amount")

    @classmethod
    def from_contract(cls, terms: ContractTerms, *, creator: str | None = None) -> EscrowTerms:
        """Escrow for signed contract terms: the whole ``max_charge``, in units."""
        return cls(
            contract_id=terms.contract_id,
            job_id=terms.job_id,
            consumer=terms.consumer,
            provider=terms.provider,
            amount=credits_to_units(terms.max_charge),
            creator=creator,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "contract_id": self.contract_id,
            "job_id": self.job_id,
            "consumer": self.consumer,
            "provider": self.provider,
            "amount": self.amount,
            "creator": self.creator,
        }


@dataclass(frozen=True)
class VerifiedResult:
    """A verified result (or checkpoint) of a contract, worth ``amount`` units.

    ``result_id`` is the SHA-256 (``document_digest``) of the signed result or checkpoint
    document. ``final`` says this is the contract's last payment: the rest of the escrow
    goes back to the consumer. Build one with ``attest_result``.
    """

    contract_id: str
    result_id: str
    amount: int
    final: bool
    attestation: Mapping[str, Any] = field(repr=False)

    @property
    def verifier(self) -> str:
        signer = self.attestation.get("signer")
        return signer if isinstance(signer, str) else ""

    def fields(self) -> dict[str, Any]:
        return {
            "contract_id": self.contract_id,
            "result_id": self.result_id,
            "amount": self.amount,
            "final": self.final,
        }


def attest_result(
    verifier: Identity, *, contract_id: str, result_id: str, amount: int, final: bool = True
) -> VerifiedResult:
    """A ``VerifiedResult`` signed by ``verifier`` (who checked the result)."""
    body = {
        "contract_id": check_contract_id(contract_id),
        "result_id": check_digest(result_id, what="result id"),
        "amount": check_amount(amount, what="release amount", allow_zero=True),
        "final": bool(final),
    }
    document = sign_document(verifier, VERIFIED_RESULT_KIND, body)
    return VerifiedResult(
        contract_id=contract_id,
        result_id=result_id,
        amount=amount,
        final=bool(final),
        attestation=document,
    )


def check_verified_result(result: VerifiedResult) -> str:
    """The verifier's DID, once its attestation is proven to sign exactly these fields.

    Raises ``SettlementError`` (``unverified_result``) for a missing, malformed, unsigned or
    mismatching attestation; ``bad_id`` / ``bad_amount`` for malformed fields. Whether the
    verifier may vouch for this contract is the ledger's check.
    """
    if not isinstance(result, VerifiedResult):
        raise SettlementError("a release needs a VerifiedResult", code="unverified_result")
    check_contract_id(result.contract_id)
    check_digest(result.result_id, what="result id")
    check_amount(result.amount, what="release amount", allow_zero=True)
    try:
        body = verify_document(dict(result.attestation), kind=VERIFIED_RESULT_KIND)
    except (IdentityError, TypeError, ValueError) as exc:
        raise SettlementError(
            f"result {result.result_id[:12]} has no valid verification: {exc}",
            code="unverified_result",
        ) from exc
    if body != result.fields():
        raise SettlementError(
            "the verification attests other fields than the release asks for",
            code="unverified_result",
        )
    return result.verifier


@dataclass(frozen=True)
class FraudRecord:
    """Proven fraud by a provider, signed by an arbiter: grounds to slash ``amount`` of stake.

    ``evidence`` lists the digests of the documents that prove it (for example two
    conflicting signed results for one contract).
    """

    fraud_id: str
    provider: str
    contract_id: str
    evidence: tuple[str, ...]
    amount: int
    document: Mapping[str, Any] = field(repr=False)

    @property
    def arbiter(self) -> str:
        signer = self.document.get("signer")
        return signer if isinstance(signer, str) else ""

    def fields(self) -> dict[str, Any]:
        return {
            "fraud_id": self.fraud_id,
            "provider": self.provider,
            "contract_id": self.contract_id,
            "evidence": list(self.evidence),
            "amount": self.amount,
        }

    @property
    def evidence_digest(self) -> str:
        """SHA-256 hex of the canonical evidence list (what the chain records)."""
        return hashlib.sha256(canonical_json(list(self.evidence))).hexdigest()


def record_fraud(
    arbiter: Identity,
    *,
    fraud_id: str,
    provider: str,
    contract_id: str,
    evidence: tuple[str, ...] | list[str],
    amount: int,
) -> FraudRecord:
    """A ``FraudRecord`` signed by ``arbiter``."""
    record = {
        "fraud_id": check_operation_id(fraud_id, what="fraud id"),
        "provider": check_did(provider, what="provider"),
        "contract_id": check_contract_id(contract_id),
        "evidence": [check_digest(item, what="evidence") for item in evidence],
        "amount": check_amount(amount, what="slash amount"),
    }
    document = sign_document(arbiter, FRAUD_RECORD_KIND, record)
    return FraudRecord(
        fraud_id=fraud_id,
        provider=provider,
        contract_id=contract_id,
        evidence=tuple(evidence),
        amount=amount,
        document=document,
    )


def check_fraud_record(record: FraudRecord, *, arbiters: frozenset[str]) -> None:
    """Raise ``SettlementError`` (``no_fraud_record``) unless ``record`` is signed by one of
    ``arbiters`` over exactly its fields, with at least one piece of evidence."""
    if not isinstance(record, FraudRecord):
        raise SettlementError("a slash needs a FraudRecord", code="no_fraud_record")
    try:
        body = verify_document(dict(record.document), kind=FRAUD_RECORD_KIND)
    except (IdentityError, TypeError, ValueError) as exc:
        raise SettlementError(
            f"fraud record {record.fraud_id!r} is not validly signed: {exc}",
            code="no_fraud_record",
        ) from exc
    if body != record.fields() or not record.evidence:
        raise SettlementError(
            "the fraud record's signature covers other fields, or it has no evidence",
            code="no_fraud_record",
        )
    if record.arbiter not in arbiters:
        raise SettlementError(
            f"fraud record signed by {record.arbiter}, who is no arbiter of this ledger",
            code="no_fraud_record",
        )


@dataclass(frozen=True)
class Balance:
    """One account's money, in units: spendable, locked in its open escrows, staked."""

    did: str
    available: int
    escrowed: int
    staked: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "did": self.did,
            "available": self.available,
            "escrowed": self.escrowed,
            "staked": self.staked,
        }


@dataclass(frozen=True)
class EscrowState:
    """One contract's escrow: locked, paid out so far, refunded; ``closed`` once settled."""

    contract_id: str
    consumer: str
    provider: str
    creator: str | None
    locked: int
    released: int
    refunded: int
    closed: bool

    @property
    def remaining(self) -> int:
        return self.locked - self.released - self.refunded

    def to_dict(self) -> dict[str, Any]:
        return {
            "contract_id": self.contract_id,
            "consumer": self.consumer,
            "provider": self.provider,
            "creator": self.creator,
            "locked": self.locked,
            "released": self.released,
            "refunded": self.refunded,
            "remaining": self.remaining,
            "closed": self.closed,
        }
