"""The consumer's job repository.

Each job keeps a history, a list of events ``{"at": unix seconds, "event", "detail"}``,
oldest first, at most ``MAX_HISTORY`` (the latest): ``submitted``; ``placed`` per contract
(provider, contract id, checkpoint resumed from); ``queued`` when it starts waiting for
capacity; the final status (``completed``, ``failed``, ``no_provider``) once; and what
callers add with ``record_event`` (recovery's ``relocated``, migration's ``migrated``,
``cancelled`` per allocation a cancel stopped).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from computemesh.models.errors import MeshError
from computemesh.store.checkpoints import CheckpointRepository
from computemesh.store.database import JobRow, SupersededContractRow
from computemesh.store.logs import LogRepository
from computemesh.store.queue import PlacementQueue
from computemesh.store.verification import FraudRepository, ReputationRepository

JOB_STATES = ("pending", "bidding", "queued", "running", "completed", "failed", "no_provider")
FINAL_STATES = frozenset({"completed", "failed", "no_provider"})
MAX_HISTORY = 256


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
    history: list[dict[str, Any]] = field(default_factory=list)

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
        history=list(row.history or []),
    )


def _append_event(row: JobRow, event: str, detail: dict[str, Any]) -> None:
    entry = {"at": time.time(), "event": event, "detail": detail}
    row.history = [*(row.history or []), entry][-MAX_HISTORY:]


class UnknownJob(MeshError):
    default_code = "unknown_job"


class JobRepository:
    """Jobs by id. Each method commits before it returns; ``get`` raises ``UnknownJob``."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self.queue = PlacementQueue(sessions)
        """Jobs waiting for capacity, in the same store."""
        self.reputation = ReputationRepository(sessions)
        """Providers' records as this consumer verified them, in the same store."""
        self.fraud = FraudRepository(sessions)
        """Proven frauds, in the same store."""
        self.checkpoints = CheckpointRepository(sessions)
        """Verified checkpoints of the jobs, in the same store."""
        self.logs = LogRepository(sessions)
        """Live output of running jobs, in the same store."""

    def create(self, job_id: str, name: str, spec: dict[str, Any]) -> JobRecord:
        with self._sessions.begin() as session:
            row = JobRow(job_id=job_id, name=name, status="pending", spec=spec, history=[])
            _append_event(row, "submitted", {})
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

    def in_states(self, states: tuple[str, ...]) -> list[JobRecord]:
        """Jobs whose status is one of ``states``, oldest first (what recovery resumes)."""
        with self._sessions() as session:
            rows = session.scalars(
                select(JobRow).where(JobRow.status.in_(states)).order_by(JobRow.created_at)
            ).all()
            return [_record(row) for row in rows]

    def set_status(self, job_id: str, status: str, reason: str = "") -> None:
        if status not in JOB_STATES:
            raise ValueError(f"unknown job state {status}")
        with self._sessions.begin() as session:
            row = self._row(session, job_id)
            if status != row.status and (status == "queued" or status in FINAL_STATES):
                _append_event(row, status, {"reason": reason})
            row.status = status
            row.reason = reason

    def record_event(self, job_id: str, event: str, detail: dict[str, Any]) -> None:
        """Add an event to the job's history (``detail`` must be JSON)."""
        with self._sessions.begin() as session:
            _append_event(self._row(session, job_id), event, detail)

    def add_contract(self, job_id: str, contract: dict[str, Any]) -> None:
        with self._sessions.begin() as session:
            row = self._row(session, job_id)
            row.contracts = [*row.contracts, contract]
            if row.status not in FINAL_STATES:  # a job cancelled meanwhile stays ended
                row.status = "running"
            terms = contract["terms"]
            placed = {key: terms.get(key) for key in ("provider", "contract_id", "resume_from")}
            _append_event(row, "placed", placed)

    def supersede_contract(self, job_id: str, contract_id: str) -> bool:
        """Drop a contract (and any result for it) that another provider will replace.

        The contract is kept among the job's ``superseded`` ones, in the same transaction,
        so its escrow can still be settled. The job goes back to ``bidding``. False,
        changing nothing, when the job is final or holds no such contract, so concurrent
        callers supersede a contract only once.
        """
        with self._sessions.begin() as session:
            row = self._row(session, job_id)
            kept = [c for c in row.contracts if c["terms"]["contract_id"] != contract_id]
            if row.status in FINAL_STATES or len(kept) == len(row.contracts):
                return False
            dropped = next(c for c in row.contracts if c["terms"]["contract_id"] == contract_id)
            session.merge(
                SupersededContractRow(contract_id=contract_id, job_id=job_id, contract=dropped)
            )
            row.contracts = kept
            row.results = [r for r in row.results if r["body"]["contract_id"] != contract_id]
            row.status = "bidding"
            return True

    def superseded(self, job_id: str) -> list[dict[str, Any]]:
        """The contracts ``supersede_contract`` dropped from the job, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(SupersededContractRow)
                .where(SupersededContractRow.job_id == job_id)
                .order_by(SupersededContractRow.created_at)
            ).all()
            return [row.contract for row in rows]

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
            if status in FINAL_STATES and row.status not in FINAL_STATES:
                _append_event(row, status, {"reason": reason, "verified": verified})
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
