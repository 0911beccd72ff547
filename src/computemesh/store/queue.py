"""The consumer's durable placement queue: jobs waiting for capacity, in priority order."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from computemesh.store.database import QueuedJobRow, now_s


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    priority: int
    enqueued_at: float
    reason: str


def _entry(row: QueuedJobRow) -> QueuedJob:
    return QueuedJob(
        job_id=row.job_id, priority=row.priority, enqueued_at=row.enqueued_at, reason=row.reason
    )


class PlacementQueue:
    """Queued jobs by id; every write commits before returning.

    Order: higher ``priority`` first, then earlier ``enqueued_at``, then job id. Enqueueing
    a job already queued keeps its place and updates only its reason.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def enqueue(self, job_id: str, *, priority: int, reason: str) -> QueuedJob:
        with self._sessions.begin() as session:
            row = session.get(QueuedJobRow, job_id)
            if row is None:
                row = QueuedJobRow(
                    job_id=job_id, priority=priority, enqueued_at=now_s(), reason=reason
                )
                session.add(row)
            else:
                row.reason = reason
            session.flush()
            return _entry(row)

    def remove(self, job_id: str) -> bool:
        """Take a job out of the queue; False if it was not queued."""
        with self._sessions.begin() as session:
            row = session.get(QueuedJobRow, job_id)
            if row is None:
                return False
            session.delete(row)
            return True

    def get(self, job_id: str) -> QueuedJob | None:
        with self._sessions() as session:
            row = session.get(QueuedJobRow, job_id)
            return None if row is None else _entry(row)

    def ordered(self) -> list[QueuedJob]:
        """Every queued job, first to place first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(QueuedJobRow).order_by(
                    QueuedJobRow.priority.desc(),
                    QueuedJobRow.enqueued_at,
                    QueuedJobRow.job_id,
                )
            ).all()
            return [_entry(row) for row in rows]

    def position(self, job_id: str) -> int | None:
        """1 for the next job to place; None when the job is not queued."""
        with self._sessions() as session:
            row = session.get(QueuedJobRow, job_id)
            if row is None:
                return None
            ahead = session.scalar(
                select(func.count()).where(
                    or_(
                        QueuedJobRow.priority > row.priority,
                        and_(
                            QueuedJobRow.priority == row.priority,
                            or_(
                                QueuedJobRow.enqueued_at < row.enqueued_at,
                                and_(
                                    QueuedJobRow.enqueued_at == row.enqueued_at,
                                    QueuedJobRow.job_id < row.job_id,
                                ),
                            ),
                        ),
                    )
                )
            )
            return int(ahead or 0) + 1
