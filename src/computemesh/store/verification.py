"""The consumer's verification state: provider reputation and fraud records."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from computemesh.store.database import Base, now_s
from computemesh.verification.fraud import FraudFinding
from computemesh.verification.reputation import ProviderRecord, UptimeRecord


class ReputationRow(Base):
    """One provider's record with one executor, counts as of ``updated_at``."""

    __tablename__ = "reputation"

    did: Mapped[str] = mapped_column(String(128), primary_key=True)
    executor: Mapped[str] = mapped_column(String(32), primary_key=True)
    verified: Mapped[float] = mapped_column(Float, default=0.0)
    timeouts: Mapped[float] = mapped_column(Float, default=0.0)
    disputes_lost: Mapped[float] = mapped_column(Float, default=0.0)
    fraud: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)


class UptimeRow(Base):
    """One provider's seconds seen up and down, as of ``updated_at``."""

    __tablename__ = "provider_uptime"

    did: Mapped[str] = mapped_column(String(128), primary_key=True)
    up_s: Mapped[float] = mapped_column(Float, default=0.0)
    down_s: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)


class FraudRow(Base):
    """A proven fraud: the losing and winning signed results and the signed verdict."""

    __tablename__ = "fraud_records"

    contract_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    provider: Mapped[str] = mapped_column(String(128), index=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, default=now_s)


def _provider_record(row: ReputationRow) -> ProviderRecord:
    return ProviderRecord(
        did=row.did,
        executor=row.executor,
        verified=row.verified,
        timeouts=row.timeouts,
        disputes_lost=row.disputes_lost,
        fraud=row.fraud,
        updated_at=row.updated_at,
    )


class ReputationRepository:
    """A ``verification.ReputationStore`` in SQL; every write commits before returning."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def load(self, did: str, executor: str) -> ProviderRecord | None:
        with self._sessions() as session:
            row = session.get(ReputationRow, (did, executor))
            return None if row is None else _provider_record(row)

    def save(self, record: ProviderRecord) -> None:
        with self._sessions.begin() as session:
            row = session.get(ReputationRow, (record.did, record.executor))
            if row is None:
                row = ReputationRow(did=record.did, executor=record.executor)
                session.add(row)
            row.verified = record.verified
            row.timeouts = record.timeouts
            row.disputes_lost = record.disputes_lost
            row.fraud = record.fraud
            row.updated_at = record.updated_at

    def records_of(self, did: str) -> list[ProviderRecord]:
        with self._sessions() as session:
            rows = session.scalars(select(ReputationRow).where(ReputationRow.did == did))
            return [_provider_record(row) for row in rows]

    def fraudulent(self) -> set[str]:
        with self._sessions() as session:
            rows = session.scalars(
                select(ReputationRow.did).where(ReputationRow.fraud.is_(True)).distinct()
            )
            return set(rows)

    def providers(self) -> list[str]:
        with self._sessions() as session:
            rated = set(session.scalars(select(ReputationRow.did).distinct()))
            watched = set(session.scalars(select(UptimeRow.did)))
            return sorted(rated | watched)

    def load_uptime(self, did: str) -> UptimeRecord | None:
        with self._sessions() as session:
            row = session.get(UptimeRow, did)
            if row is None:
                return None
            return UptimeRecord(
                did=row.did, up_s=row.up_s, down_s=row.down_s, updated_at=row.updated_at
            )

    def save_uptime(self, record: UptimeRecord) -> None:
        with self._sessions.begin() as session:
            row = session.get(UptimeRow, record.did)
            if row is None:
                row = UptimeRow(did=record.did)
                session.add(row)
            row.up_s = record.up_s
            row.down_s = record.down_s
            row.updated_at = record.updated_at


class FraudRepository:
    """Fraud records by contract; storing one twice keeps the first."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def add(self, finding: FraudFinding) -> bool:
        """Store ``finding``; False when its contract already has one."""
        with self._sessions.begin() as session:
            if session.get(FraudRow, finding.contract_id) is not None:
                return False
            session.add(
                FraudRow(
                    contract_id=finding.contract_id,
                    job_id=finding.job_id,
                    provider=finding.provider,
                    record=finding.to_dict(),
                )
            )
            return True

    def for_job(self, job_id: str) -> list[dict[str, Any]]:
        with self._sessions() as session:
            rows = session.scalars(
                select(FraudRow).where(FraudRow.job_id == job_id).order_by(FraudRow.created_at)
            )
            return [dict(row.record) for row in rows]
