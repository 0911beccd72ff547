"""Consumer side of live logs: output chunks a provider pushes while its allocation runs.

A chunk is stored when its sender is the provider of that contract of that job; repeats
of a ``(contract, seq)`` are ignored. ``cmesh logs`` reads them back from the store.
"""

from __future__ import annotations

from computemesh.actor import Inbound
from computemesh.models.errors import MeshError, VerificationError
from computemesh.models.market import LogChunk
from computemesh.models.validation import parse_model
from computemesh.store import JobRepository


class LogDesk:
    """The orchestrator's log handler over the job store."""

    def __init__(self, jobs: JobRepository) -> None:
        self.jobs = jobs

    async def on_log(self, inbound: Inbound) -> None:
        self.accept(inbound.sender, inbound.payload.get("chunk"))

    def accept(self, sender: str, data: object) -> bool:
        """Store one chunk from ``sender``; False for a repeat. Raises VerificationError."""
        chunk = parse_model(LogChunk, data, what="log chunk")
        if not self._holds(sender, chunk.job_id, chunk.contract_id):
            raise VerificationError("log chunk for a contract this sender does not hold")
        return self.jobs.logs.append(
            job_id=chunk.job_id,
            contract_id=chunk.contract_id,
            seq=chunk.seq,
            stream=chunk.stream,
            data=chunk.data,
            dropped=chunk.dropped,
        )

    def _holds(self, sender: str, job_id: str, contract_id: str) -> bool:
        try:
            record = self.jobs.get(job_id)
        except MeshError:
            return False
        return any(
            item["terms"]["contract_id"] == contract_id and item["terms"]["provider"] == sender
            for item in record.contracts
        )
