"""The consumer's job repository."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from computemesh.models.errors import MeshError
from computemesh.store.database import JobRow

JOB_STATES = ("pending", "bidding", "running", "completed", "failed", "no_provider")
FINAL_STATES = frozenset({"completed", "failed", "no_provider"})


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    name: str
    status: str
    reason: str
    spec: dict[str, Any]
    contracts: list[dict[str, Any]]
    results: list[dict[str, Any]]
    verified: bool | None
    created_at: float
    updated_at: float

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATES


def _record(row: JobRow) -> JobRecord:
    return JobRecord(
        job_id=row.job_id,
        name=row.name,
        status=row.status,
        reason=row.reason,
        spec=row.spec,
        contracts=list(row.contracts or []),
        results=list(row.results or []),
        verified=row.verified,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class UnknownJob(MeshError):
    default_code = "unknown_job"


class JobRepository:
    """Jobs by id. Each method commits before it returns; ``get`` raises ``UnknownJob``."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def create(self, job_id: str, name: str, spec: dict[str, Any]) -> JobRecord:
        with self._sessions.begin() as session:
            row = JobRow(job_id=job_id, name=name, status="pending", spec=spec)
            session.add(row)
            session.flush()
            return _record(row)

    def get(self, job_id: str) -> JobRecord:
        with self._sessions() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise UnknownJob(f"no job {job_id} in this home", hint="see `cmesh jobs`")
            return _record(row)

    def find(self, prefix: str) -> JobRecord:
        """A job by its id or a unique prefix of it."""
        with self._sessions() as session:
            rows = session.scalars(
                select(JobRow).where(JobRow.job_id.startswith(prefix)).limit(2)
            ).all()
        if len(rows) != 1:
            what = "no job" if not rows else "more than one job"
            raise UnknownJob(f"{what} matches {prefix!r}", hint="see `cmesh jobs`")
        return _record(rows[0])

    def recent(self, *, limit: int = 100) -> list[JobRecord]:
        with self._sessions() as session:
            rows = session.scalars(
                select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
            ).all()
            return [_record(row) for row in rows]

    def set_status(self, job_id: str, status: str, reason: str = "") -> None:
        if status not in JOB_STATES:
            raise ValueError(f"unknown job state {status}")
        with self._sessions.begin() as session:
            row = self._row(session, job_id)
            row.status = status
            row.reason = reason

    def add_contract(self, job_id: str, contract: dict[str, Any]) -> None:
        with self._sessions.begin() as session:
            row = self._row(session, job_id)
            row.contracts = [*row.contracts, contract]
            row.status = "running"

    def record_outcome(
        self,
        job_id: str,
        *,
        results: list[dict[str, Any]],
        status: str,
        verified: bool,
        reason: str,
    ) -> None:
        with self._sessions.begin() as session:
            row = self._row(session, job_id)
            row.results = results
            row.status = status
            row.verified = verified
            row.reason = reason

    @staticmethod
    def _row(session: Session, job_id: str) -> JobRow:
        row = session.get(JobRow, job_id)
        if row is None:
            raise UnknownJob(f"no job {job_id}")
        return row
