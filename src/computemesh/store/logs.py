"""The consumer's live logs: output chunks of running jobs, in the order providers sent them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from computemesh.store.database import LogChunkRow


@dataclass(frozen=True)
class StoredLogChunk:
    id: int
    job_id: str
    contract_id: str
    seq: int
    stream: str
    data: str
    dropped: int
    created_at: float


def _stored(row: LogChunkRow) -> StoredLogChunk:
    return StoredLogChunk(
        id=row.id,
        job_id=row.job_id,
        contract_id=row.contract_id,
        seq=row.seq,
        stream=row.stream,
        data=row.data,
        dropped=row.dropped,
        created_at=row.created_at,
    )


class LogRepository:
    """Log chunks by job; ``append`` commits and ignores a repeated ``(contract_id, seq)``.

    ``after(job_id, last_id)`` returns the chunks stored after the one with id ``last_id``
    (0: from the start), oldest first, so a follower polls with the last id it printed.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def append(
        self, *, job_id: str, contract_id: str, seq: int, stream: str, data: str, dropped: int
    ) -> bool:
        try:
            with self._sessions.begin() as session:
                session.add(
                    LogChunkRow(
                        job_id=job_id,
                        contract_id=contract_id,
                        seq=seq,
                        stream=stream,
                        data=data,
                        dropped=dropped,
                    )
                )
        except IntegrityError:
            return False
        return True

    def after(self, job_id: str, last_id: int = 0, *, limit: int = 1000) -> list[StoredLogChunk]:
        with self._sessions() as session:
            rows = session.scalars(
                select(LogChunkRow)
                .where(LogChunkRow.job_id == job_id, LogChunkRow.id > last_id)
                .order_by(LogChunkRow.id)
                .limit(limit)
            ).all()
            return [_stored(row) for row in rows]
