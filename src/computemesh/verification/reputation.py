"""Reputation: what this consumer has seen of each provider, decaying over time.

A provider's record is kept per executor (a node may be honest with ``wasm`` and careless
with ``process``). Only results confirmed by another provider count as verified, so a
cheater cannot build a record from results nobody checked. Counts halve every
``half_life_s``; proven fraud does not decay: the provider stays excluded.

    score = (verified + 1) / (verified + 2 + timeouts + LOST_WEIGHT x disputes lost)

so a provider never seen scores 0.5, and a fraudulent one scores 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from computemesh.identity import Identity, sign_document, verify_document
from computemesh.models.errors import IdentityError, VerificationError

REPUTATION_ATTESTATION_KIND = "reputation-attestation"
DAY_S = 24 * 3600.0
DEFAULT_HALF_LIFE_S = 30 * DAY_S
LOST_WEIGHT = 10.0
UNKNOWN_SCORE = 0.5


@dataclass(frozen=True)
class ProviderRecord:
    """One provider's record with one executor, as of ``updated_at`` (Unix seconds)."""

    did: str
    executor: str
    verified: float = 0.0
    timeouts: float = 0.0
    disputes_lost: float = 0.0
    fraud: bool = False
    updated_at: float = 0.0

    def decayed(self, now: float, half_life_s: float) -> ProviderRecord:
        """The record with its counts aged from ``updated_at`` to ``now``."""
        if now <= self.updated_at or self.updated_at == 0.0:
            return replace(self, updated_at=max(now, self.updated_at))
        factor = 0.5 ** ((now - self.updated_at) / half_life_s)
        return replace(
            self,
            verified=self.verified * factor,
            timeouts=self.timeouts * factor,
            disputes_lost=self.disputes_lost * factor,
            updated_at=now,
        )


def score_of(records: list[ProviderRecord]) -> float:
    """A provider's reputation in 0..1 from its records over every executor."""
    if any(record.fraud for record in records):
        return 0.0
    verified = sum(record.verified for record in records)
    bad = sum(record.timeouts + LOST_WEIGHT * record.disputes_lost for record in records)
    return (verified + 1.0) / (verified + 2.0 + bad)


class ReputationStore(Protocol):
    """Where provider records live (``MemoryReputationStore``, ``store.ReputationRepository``).

    ``load`` returns None for a pair never saved; ``save`` replaces the pair's record and is
    durable when it returns; ``records_of`` lists a provider's records over all executors;
    ``fraudulent`` the DIDs with a proven fraud.
    """

    def load(self, did: str, executor: str) -> ProviderRecord | None: ...

    def save(self, record: ProviderRecord) -> None: ...

    def records_of(self, did: str) -> list[ProviderRecord]: ...

    def fraudulent(self) -> set[str]: ...


class MemoryReputationStore:
    """Provider records in a dict: for tests and the simulation."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, ProviderRecord]] = {}
        self._fraud: set[str] = set()

    def load(self, did: str, executor: str) -> ProviderRecord | None:
        return self._records.get(did, {}).get(executor)

    def save(self, record: ProviderRecord) -> None:
        self._records.setdefault(record.did, {})[record.executor] = record
        if record.fraud:
            self._fraud.add(record.did)

    def records_of(self, did: str) -> list[ProviderRecord]:
        return list(self._records.get(did, {}).values())

    def fraudulent(self) -> set[str]:
        return set(self._fraud)


class ReputationBook:
    """Updates and reads provider records through a ``ReputationStore``, applying decay."""

    def __init__(
        self,
        store: ReputationStore,
        *,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.half_life_s = half_life_s
        self.clock = clock

    def record(self, did: str, executor: str) -> ProviderRecord:
        """The provider's record with ``executor``, aged to now (empty if never seen)."""
        found = self.store.load(did, executor) or ProviderRecord(did=did, executor=executor)
        return found.decayed(self.clock(), self.half_life_s)

    def reputation_of(self, did: str) -> float:
        """The provider's score in 0..1: 0.5 when unknown, 0 after proven fraud."""
        now = self.clock()
        records = [r.decayed(now, self.half_life_s) for r in self.store.records_of(did)]
        return score_of(records) if records else UNKNOWN_SCORE

    def is_excluded(self, did: str) -> bool:
        return did in self.store.fraudulent()

    def excluded(self) -> set[str]:
        """Providers never to be placed again: each was caught in a fraud."""
        return self.store.fraudulent()

    def note_verified(self, did: str, executor: str) -> None:
        """Another provider's result confirmed this provider's."""
        self._update(did, executor, verified=1.0)

    def note_timeout(self, did: str, executor: str) -> None:
        """The provider did not deliver an answer (lost, late, or failed to run)."""
        self._update(did, executor, timeouts=1.0)

    def note_fraud(self, did: str, executor: str) -> None:
        """A quorum proved this provider's signed result wrong."""
        self._update(did, executor, disputes_lost=1.0, fraud=True)

    def _update(
        self,
        did: str,
        executor: str,
        *,
        verified: float = 0.0,
        timeouts: float = 0.0,
        disputes_lost: float = 0.0,
        fraud: bool = False,
    ) -> None:
        current = self.record(did, executor)
        self.store.save(
            replace(
                current,
                verified=current.verified + verified,
                timeouts=current.timeouts + timeouts,
                disputes_lost=current.disputes_lost + disputes_lost,
                fraud=current.fraud or fraud,
            )
        )


@dataclass(frozen=True)
class ReputationAttestation:
    """A signed statement by ``issuer`` of what it has seen of ``subject``."""

    issuer: str
    subject: str
    score: float
    verified: float
    timeouts: float
    disputes_lost: float
    fraud: bool
    issued_at_ms: int
    document: dict[str, Any]


def attest_reputation(issuer: Identity, book: ReputationBook, did: str) -> dict[str, Any]:
    """A ``reputation-attestation`` document over ``did``'s record, signed by ``issuer``."""
    now = book.clock()
    records = [r.decayed(now, book.half_life_s) for r in book.store.records_of(did)]
    body = {
        "subject": did,
        "score": round(score_of(records) if records else UNKNOWN_SCORE, 6),
        "verified": round(sum(r.verified for r in records), 6),
        "timeouts": round(sum(r.timeouts for r in records), 6),
        "disputes_lost": round(sum(r.disputes_lost for r in records), 6),
        "fraud": any(r.fraud for r in records),
        "issued_at_ms": int(now * 1000),
    }
    return sign_document(issuer, REPUTATION_ATTESTATION_KIND, body)


ATTESTATION_FIELDS = {
    "subject": str,
    "score": float,
    "verified": float,
    "timeouts": float,
    "disputes_lost": float,
    "fraud": bool,
    "issued_at_ms": int,
}


def check_reputation_attestation(
    document: object, *, issuer: str | None = None
) -> ReputationAttestation:
    """The attestation, once its signature (by ``issuer`` if given) and fields check.

    Raises ``VerificationError`` (``bad_attestation``) naming what is wrong.
    """
    try:
        body = verify_document(document, kind=REPUTATION_ATTESTATION_KIND, signer=issuer)
    except IdentityError as exc:
        raise VerificationError(f"attestation: {exc.message}", code="bad_attestation") from exc
    if set(body) != set(ATTESTATION_FIELDS):
        raise VerificationError("attestation fields differ", code="bad_attestation")
    for name, kind in ATTESTATION_FIELDS.items():
        value = body[name]
        numeric = kind is float and isinstance(value, int | float) and not isinstance(value, bool)
        if not (numeric or (type(value) is kind)):
            raise VerificationError(
                f"attestation {name} is not {kind.__name__}", code="bad_attestation"
            )
    if not 0.0 <= body["score"] <= 1.0:
        raise VerificationError("attestation score is outside 0..1", code="bad_attestation")
    assert isinstance(document, dict)
    return ReputationAttestation(
        issuer=document["signer"],
        subject=body["subject"],
        score=float(body["score"]),
        verified=float(body["verified"]),
        timeouts=float(body["timeouts"]),
        disputes_lost=float(body["disputes_lost"]),
        fraud=body["fraud"],
        issued_at_ms=body["issued_at_ms"],
        document=document,
    )
