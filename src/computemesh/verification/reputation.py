"""Reputation: what this consumer has seen of each provider, decaying over time.

A provider's record is kept per executor (a node may be honest with ``wasm`` and careless
with ``process``). Only results confirmed by another provider count as verified, so a
cheater cannot build a record from results nobody checked. Counts halve every
``half_life_s``; proven fraud does not decay: the provider stays excluded.

    record = (verified + 1) / (verified + 2 + timeouts + LOST_WEIGHT x disputes lost)
    availability = (up_s + UPTIME_PRIOR_S) / (up_s + down_s + UPTIME_PRIOR_S)
    score = record x availability

so a provider never seen scores 0.5, and a fraudulent one scores 0. A timeout is an
answer that never came: a result that never ran to an exit, or an allocation the
orchestrator had to move because its provider died, went silent or lost it.
``up_s``/``down_s`` are the seconds the consumer's liveness tracking saw the provider
heartbeating or silent (``orchestrator.liveness``), per provider over all executors and
halving like the counts; the prior of one hour makes a brief gap in a short acquaintance
cost little, while a provider silent a third of the time it is watched keeps about two
thirds of its score.
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
UPTIME_PRIOR_S = 3600.0
DEFAULT_ATTESTATION_VALID_S = 7 * DAY_S
CLOCK_SKEW_S = 300.0
"""An attestation issued this far in the future of the checker's clock is still taken."""


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


@dataclass(frozen=True)
class UptimeRecord:
    """Seconds a provider was seen up and down, as of ``updated_at`` (Unix seconds)."""

    did: str
    up_s: float = 0.0
    down_s: float = 0.0
    updated_at: float = 0.0

    def decayed(self, now: float, half_life_s: float) -> UptimeRecord:
        """The record with its seconds aged from ``updated_at`` to ``now``."""
        if now <= self.updated_at or self.updated_at == 0.0:
            return replace(self, updated_at=max(now, self.updated_at))
        factor = 0.5 ** ((now - self.updated_at) / half_life_s)
        return replace(self, up_s=self.up_s * factor, down_s=self.down_s * factor, updated_at=now)

    @property
    def availability(self) -> float:
        """The share of its watched time the provider was up, pulled toward 1 by the prior."""
        return (self.up_s + UPTIME_PRIOR_S) / (self.up_s + self.down_s + UPTIME_PRIOR_S)


def score_of(records: list[ProviderRecord], uptime: UptimeRecord | None = None) -> float:
    """A provider's reputation in 0..1 from its records over every executor and its uptime."""
    if any(record.fraud for record in records):
        return 0.0
    verified = sum(record.verified for record in records)
    bad = sum(record.timeouts + LOST_WEIGHT * record.disputes_lost for record in records)
    availability = uptime.availability if uptime is not None else 1.0
    return (verified + 1.0) / (verified + 2.0 + bad) * availability


class ReputationStore(Protocol):
    """Where provider records live (``MemoryReputationStore``, ``store.ReputationRepository``).

    ``load`` returns None for a pair never saved; ``save`` replaces the pair's record and is
    durable when it returns; ``records_of`` lists a provider's records over all executors;
    ``fraudulent`` the DIDs with a proven fraud; ``providers`` every DID with a record or
    an uptime, sorted. ``load_uptime`` / ``save_uptime`` do the same for a provider's
    uptime (one record per DID).
    """

    def load(self, did: str, executor: str) -> ProviderRecord | None: ...

    def save(self, record: ProviderRecord) -> None: ...

    def records_of(self, did: str) -> list[ProviderRecord]: ...

    def fraudulent(self) -> set[str]: ...

    def providers(self) -> list[str]: ...

    def load_uptime(self, did: str) -> UptimeRecord | None: ...

    def save_uptime(self, record: UptimeRecord) -> None: ...


class MemoryReputationStore:
    """Provider records in a dict: for tests and the simulation."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, ProviderRecord]] = {}
        self._fraud: set[str] = set()
        self._uptime: dict[str, UptimeRecord] = {}

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

    def providers(self) -> list[str]:
        return sorted({*self._records, *self._uptime})

    def load_uptime(self, did: str) -> UptimeRecord | None:
        return self._uptime.get(did)

    def save_uptime(self, record: UptimeRecord) -> None:
        self._uptime[record.did] = record


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

    def records(self, did: str) -> list[ProviderRecord]:
        """The provider's records over every executor, aged to now."""
        now = self.clock()
        return [r.decayed(now, self.half_life_s) for r in self.store.records_of(did)]

    def uptime(self, did: str) -> UptimeRecord:
        """The provider's uptime, aged to now (empty if never watched)."""
        found = self.store.load_uptime(did) or UptimeRecord(did=did)
        return found.decayed(self.clock(), self.half_life_s)

    def reputation_of(self, did: str) -> float:
        """The provider's score in 0..1: 0.5 when unknown, 0 after proven fraud."""
        return score_of(self.records(did), self.uptime(did))

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

    def note_uptime(self, did: str, up_s: float, down_s: float) -> None:
        """The provider was seen up for ``up_s`` and down for ``down_s`` more seconds."""
        if not (up_s >= 0.0 and down_s >= 0.0):
            raise ValueError("uptime seconds are non-negative numbers")
        current = self.uptime(did)
        self.store.save_uptime(
            replace(current, up_s=current.up_s + up_s, down_s=current.down_s + down_s)
        )

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
    up_s: float
    down_s: float
    issued_at_ms: int
    expires_at_ms: int
    document: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The checked statement, without the document around it."""
        return {
            "issuer": self.issuer,
            "subject": self.subject,
            "score": self.score,
            "verified": self.verified,
            "timeouts": self.timeouts,
            "disputes_lost": self.disputes_lost,
            "fraud": self.fraud,
            "up_s": self.up_s,
            "down_s": self.down_s,
            "issued_at_ms": self.issued_at_ms,
            "expires_at_ms": self.expires_at_ms,
        }


def attest_reputation(
    issuer: Identity,
    book: ReputationBook,
    did: str,
    *,
    valid_for_s: float = DEFAULT_ATTESTATION_VALID_S,
) -> dict[str, Any]:
    """A ``reputation-attestation`` document over ``did``'s record, signed by ``issuer``,
    valid for ``valid_for_s`` from now."""
    if not valid_for_s > 0:
        raise ValueError("an attestation is valid for a positive number of seconds")
    now = book.clock()
    records = book.records(did)
    uptime = book.uptime(did)
    body = {
        "subject": did,
        "score": round(score_of(records, uptime), 6),
        "verified": round(sum(r.verified for r in records), 6),
        "timeouts": round(sum(r.timeouts for r in records), 6),
        "disputes_lost": round(sum(r.disputes_lost for r in records), 6),
        "fraud": any(r.fraud for r in records),
        "up_s": round(uptime.up_s, 3),
        "down_s": round(uptime.down_s, 3),
        "issued_at_ms": int(now * 1000),
        "expires_at_ms": int((now + valid_for_s) * 1000),
    }
    return sign_document(issuer, REPUTATION_ATTESTATION_KIND, body)


ATTESTATION_FIELDS = {
    "subject": str,
    "score": float,
    "verified": float,
    "timeouts": float,
    "disputes_lost": float,
    "fraud": bool,
    "up_s": float,
    "down_s": float,
    "issued_at_ms": int,
    "expires_at_ms": int,
}
COUNT_FIELDS = ("verified", "timeouts", "disputes_lost", "up_s", "down_s")


def check_reputation_attestation(
    document: object, *, issuer: str | None = None, now: float | None = None
) -> ReputationAttestation:
    """The attestation, once its signature (by ``issuer`` if given), fields and validity
    period check at ``now`` (Unix seconds, default the clock).

    Raises ``VerificationError`` naming what is wrong: ``bad_attestation`` for a forged,
    tampered or malformed one, ``expired_attestation`` past its ``expires_at_ms`` or
    issued in the future (beyond ``CLOCK_SKEW_S``).
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
    for name in COUNT_FIELDS:
        if not 0.0 <= body[name] < float("inf"):
            raise VerificationError(
                f"attestation {name} is negative or not finite", code="bad_attestation"
            )
    _check_validity(
        body["issued_at_ms"], body["expires_at_ms"], time.time() if now is None else now
    )
    assert isinstance(document, dict)
    return ReputationAttestation(
        issuer=document["signer"],
        subject=body["subject"],
        score=float(body["score"]),
        verified=float(body["verified"]),
        timeouts=float(body["timeouts"]),
        disputes_lost=float(body["disputes_lost"]),
        fraud=body["fraud"],
        up_s=float(body["up_s"]),
        down_s=float(body["down_s"]),
        issued_at_ms=body["issued_at_ms"],
        expires_at_ms=body["expires_at_ms"],
        document=document,
    )


def _check_validity(issued_at_ms: int, expires_at_ms: int, now: float) -> None:
    if expires_at_ms <= issued_at_ms:
        raise VerificationError("attestation expires before it was issued", code="bad_attestation")
    now_ms = now * 1000
    if now_ms >= expires_at_ms:
        raise VerificationError(
            f"attestation expired {(now_ms - expires_at_ms) / 1000:.0f} s ago",
            code="expired_attestation",
            hint="ask its issuer for a fresh one",
        )
    if issued_at_ms > now_ms + CLOCK_SKEW_S * 1000:
        raise VerificationError(
            "attestation is issued in the future (check the clocks)", code="expired_attestation"
        )
