"""The provider's allocation repository."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from computemesh.store.database import AllocationRow


@dataclass(frozen=True)
class AllocationRecord:
    contract_id: str
    job_id: str
    consumer: str
    status: str
    spec: dict[str, Any]
    contract: dict[str, Any]
    result: dict[str, Any] | None


def _record(row: AllocationRow) -> AllocationRecord:
    return AllocationRecord(
        contract_id=row.contract_id,
        job_id=row.job_id,
        consumer=row.consumer,
        status=row.status,
        spec=row.spec,
        contract=row.contract,
        result=row.result,
    )


class AllocationRepository:
    """Allocations by contract id; every write commits before returning."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def accept(
        self,
        *,
        contract_id: str,
        job_id: str,
        consumer: str,
        spec: dict[str, Any],
        contract: dict[str, Any],
    ) -> AllocationRecord:
        with self._sessions.begin() as session:
            row = AllocationRow(
                contract_id=contract_id,
                job_id=job_id,
                consumer=consumer,
                status="accepted",
                spec=spec,
                contract=contract,
            )
            session.add(row)
            session.flush()
            return _record(row)

    def get(self, contract_id: str) -> AllocationRecord | None:
        with self._sessions() as session:
            row = session.get(AllocationRow, contract_id)
            return None if row is None else _record(row)

    def by_job(self, job_id: str) -> list[AllocationRecord]:
        with self._sessions() as session:
            rows = session.scalars(select(AllocationRow).where(AllocationRow.job_id == job_id))
            return [_record(row) for row in rows]

    def set_status(self, contract_id: str, status: str) -> None:
        with self._sessions.begin() as session:
            row = session.get(AllocationRow, contract_id)
            if row is not None:
                row.status = status

    def finish(self, contract_id: str, result: dict[str, Any]) -> None:
        with self._sessions.begin() as session:
            row = session.get(AllocationRow, contract_id)
            if row is not None:
                row.status = "finished"
                row.result = result

    def unfinished(self) -> list[AllocationRecord]:
        with self._sessions() as session:
            rows = session.scalars(select(AllocationRow).where(AllocationRow.status != "finished"))
            return [_record(row) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        with self._sessions() as session:
            rows = session.execute(
                select(AllocationRow.status, func.count()).group_by(AllocationRow.status)
            ).all()
            return {status: count for status, count in rows}
