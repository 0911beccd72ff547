"""Consumer side of checkpoints: receive, verify and keep them; hand them to a resuming node.

A provider pushes each new checkpoint of a running allocation (``/mesh/allocation/checkpoint``).
It is kept only when it is signed by the sender, the sender is the provider of that
contract of that job, and the archive hashes to what the document signs
(``protocol.checkpoints.verify_checkpoint``). Placing a job again after that (relocation,
``Orchestrator.resume``) names its latest checkpoint in the new contract's ``resume_from``;
the new provider fetches it (``/mesh/allocation/checkpoint_fetch``, with the contract, which
may not be stored here yet), which is answered only to the provider of a contract this
consumer signed for that job, resuming from exactly that checkpoint.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from computemesh.actor import Inbound
from computemesh.models.errors import MeshError, VerificationError
from computemesh.models.market import ContractTerms
from computemesh.models.validation import parse_model
from computemesh.orchestrator.progress import CheckpointByDigest
from computemesh.protocol import verify_contract
from computemesh.protocol.checkpoints import checkpoint_payload, verify_checkpoint
from computemesh.store import JobRepository
from computemesh.store.checkpoints import StoredCheckpoint

log = logging.getLogger(__name__)


class CheckpointDesk:
    """The orchestrator's checkpoint handlers over the job store (see the module docstring)."""

    def __init__(self, jobs: JobRepository, consumer: str) -> None:
        self.jobs = jobs
        self.consumer = consumer

    def latest_digest(self, job_id: str) -> str | None:
        """The sha256 of the job's latest checkpoint, None when it has none."""
        latest = self.jobs.checkpoints.latest(job_id)
        return None if latest is None else latest.sha256

    def holds_checkpoint_of(self, job_id: str, contract_id: str) -> bool:
        """Whether a checkpoint of this contract of the job is stored."""
        return any(
            item.contract_id == contract_id for item in self.jobs.checkpoints.for_job(job_id)
        )

    def document_by_digest(self, job_id: str) -> CheckpointByDigest:
        """The job's stored checkpoint documents by sha256 (``orchestrator.progress``)."""

        def document(sha256: str) -> dict[str, Any] | None:
            stored = self.jobs.checkpoints.by_digest(job_id, sha256)
            return None if stored is None else stored.document

        return document

    async def on_checkpoint(self, inbound: Inbound) -> None:
        self.accept(inbound.sender, inbound.payload)

    def accept(self, sender: str, payload: object) -> StoredCheckpoint:
        """Verify a pushed checkpoint from ``sender`` and store it; raises VerificationError."""
        checked = verify_checkpoint(payload, signer=sender)
        body = checked.body
        terms = self._contract_of(body.job_id, body.contract_id)
        if terms is None or terms.provider != sender:
            raise VerificationError(
                "checkpoint for a contract this sender does not hold", code="invalid_checkpoint"
            )
        stored = StoredCheckpoint(
            job_id=body.job_id,
            contract_id=body.contract_id,
            seq=body.seq,
            sha256=body.sha256,
            document=checked.document,
            archive=checked.archive,
            created_at=time.time(),
        )
        if self.jobs.checkpoints.add(stored):
            log.info("job %s: checkpoint %d (%s) stored", body.job_id, body.seq, body.sha256[:12])
        return stored

    async def on_checkpoint_fetch(self, inbound: Inbound) -> dict[str, Any]:
        terms = verify_contract(inbound.payload.get("contract"))
        if terms.consumer != self.consumer or terms.provider != inbound.sender:
            raise MeshError("not a contract of yours with me", code="unknown_checkpoint")
        if terms.resume_from is None:
            raise MeshError("the contract resumes from no checkpoint", code="unknown_checkpoint")
        stored = self.jobs.checkpoints.by_digest(terms.job_id, terms.resume_from)
        if stored is None:
            raise MeshError("no such checkpoint for you here", code="unknown_checkpoint")
        return checkpoint_payload(stored.document, stored.archive)

    def _contract_of(self, job_id: str, contract_id: str) -> ContractTerms | None:
        try:
            record = self.jobs.get(job_id)
        except MeshError:
            return None
        return next((t for t in _terms(record.contracts) if t.contract_id == contract_id), None)


def _terms(contracts: list[dict[str, Any]]) -> list[ContractTerms]:
    return [parse_model(ContractTerms, item["terms"], what="contract terms") for item in contracts]
