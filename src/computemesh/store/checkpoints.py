"""The consumer's checkpoints: verified archives by job, content-addressed by sha256."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from computemesh.store.database import CheckpointRow


@dataclass(frozen=True)
class StoredCheckpoint:
    job_id: str
    contract_id: str
    seq: int
    sha256: str
    document: dict[str, Any]
    archive: bytes
    created_at: float


def _stored(row: CheckpointRow) -> StoredCheckpoint:
    return StoredCheckpoint(
        job_id=row.job_id,
        contract_id=row.contract_id,
        seq=row.seq,
        sha256=row.sha256,
        document=row.document,
        archive=row.archive,
        created_at=row.created_at,
    )


class CheckpointRepository:
    """Checkpoints a consumer keeps; callers verify them before ``add``.

    ``add`` commits before it returns and is idempotent per ``(contract_id, seq)``: a
    second copy is ignored (False). ``latest`` is the one stored last for the job.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def add(self, item: StoredCheckpoint) -> bool:
        try:
            with self._sessions.begin() as session:
                session.add(
                    CheckpointRow(
                        job_id=item.job_id,
                        contract_id=item.contract_id,
                        seq=item.seq,
                        sha256=item.sha256,
                        document=item.document,
                        archive=item.archive,
                        created_at=item.created_at,
                    )
                )
        except IntegrityError:
            return False
        return True

    def latest(self, job_id: str) -> StoredCheckpoint | None:
        with self._sessions() as session:
            row = session.scalars(
                select(CheckpointRow)
                .where(CheckpointRow.job_id == job_id)
                .order_by(CheckpointRow.id.desc())
                .limit(1)
            ).first()
            return None if row is None else _stored(row)

    def by_digest(self, job_id: str, sha256: str) -> StoredCheckpoint | None:
        with self._sessions() as session:
            row = session.scalars(
                select(CheckpointRow)
                .where(CheckpointRow.job_id == job_id, CheckpointRow.sha256 == sha256)
                .order_by(CheckpointRow.id.desc())
                .limit(1)
            ).first()
            return None if row is None else _stored(row)

    def for_job(self, job_id: str) -> list[StoredCheckpoint]:
        with self._sessions() as session:
            rows = session.scalars(
                select(CheckpointRow)
                .where(CheckpointRow.job_id == job_id)
                .order_by(CheckpointRow.id)
            ).all()
            return [_stored(row) for row in rows]
