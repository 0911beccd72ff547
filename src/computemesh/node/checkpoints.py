"""Node side of checkpoints: snapshotting a running job and restoring one before it starts.

``CheckpointPump`` watches one run (an ``executor.base.RunObserver``): every
``interval_s`` seconds, and once more when the job has ended or was stopped, it archives
the job's checkpoint directory; an archive whose sha256 differs from the last one is
signed as a ``Checkpoint`` document, with the run's usage up to then (the executor's
``usage``, taken just before the archive so it never counts work the archive lacks), and
pushed to the consumer. The bytes it pushed are
metered (``bytes_out``).

``fetch_restore`` gets the checkpoint a contract names (``resume_from``) from the consumer
and proves it: signed by a provider, hashing to the digest both parties signed. Anything
else is refused before the job's directory is even made.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from computemesh.executor.base import ExecutionHandle, Executor, OutputStream
from computemesh.identity import Identity
from computemesh.models.errors import MeshError, VerificationError
from computemesh.models.market import Checkpoint, ContractTerms, ResourceUsage
from computemesh.protocol.checkpoints import checkpoint_payload, sign_checkpoint, verify_checkpoint

log = logging.getLogger(__name__)

Push = Callable[[dict[str, Any]], Awaitable[None]]
Fetch = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class CheckpointPump:
    """Snapshots one run's checkpoint directory and pushes each new archive (see module)."""

    def __init__(
        self,
        *,
        executor: Executor,
        terms: ContractTerms,
        identity: Identity,
        interval_s: float,
        push: Push,
    ) -> None:
        self.executor = executor
        self.terms = terms
        self.identity = identity
        self.interval_s = interval_s
        self.push = push
        self.seq = 0
        self.bytes_out = 0
        self.last_sha256: str | None = terms.resume_from
        self._lock = asyncio.Lock()

    def output(self, stream: OutputStream, chunk: bytes) -> None:
        return None

    async def running(self, handle: ExecutionHandle) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.snapshot(handle)

    async def ended(self, handle: ExecutionHandle) -> None:
        await self.snapshot(handle)

    async def snapshot(self, handle: ExecutionHandle) -> Checkpoint | None:
        """Archive, sign and push the directory unless it is unchanged; None if skipped."""
        async with self._lock:
            try:
                usage = await self.executor.usage(handle)
                archive = await self.executor.checkpoint(handle)
            except MeshError as exc:
                log.warning("job %s: no checkpoint taken: %s", self.terms.job_id, exc)
                return None
            checkpoint = self._statement(archive, usage)
            if checkpoint.sha256 == self.last_sha256:
                return None
            document = sign_checkpoint(self.identity, checkpoint)
            try:
                await self.push(checkpoint_payload(document, archive))
            except MeshError as exc:
                log.warning("job %s: checkpoint not delivered: %s", self.terms.job_id, exc)
                return None
            self.seq += 1
            self.bytes_out += len(archive)
            self.last_sha256 = checkpoint.sha256
            return checkpoint

    def _statement(self, archive: bytes, usage: ResourceUsage) -> Checkpoint:
        return Checkpoint(
            contract_id=self.terms.contract_id,
            job_id=self.terms.job_id,
            provider=self.identity.did,
            seq=self.seq,
            sha256=hashlib.sha256(archive).hexdigest(),
            size=len(archive),
            created_at_ms=int(time.time() * 1000),
            usage=usage.model_copy(update={"bytes_out": self.bytes_out + len(archive)}),
        )


async def fetch_restore(
    terms: ContractTerms, contract: dict[str, Any], fetch: Fetch
) -> bytes | None:
    """The archive ``contract`` resumes from, proven; None when it starts afresh.

    The consumer is asked with the countersigned ``contract`` (whose ``terms`` they are).

    Raises VerificationError (code "invalid_checkpoint") for one whose signature or hash
    does not match, and MeshError when the consumer cannot provide it.
    """
    if terms.resume_from is None:
        return None
    reply = await fetch({"contract": contract})
    checked = verify_checkpoint(reply, sha256=terms.resume_from)
    if checked.body.job_id != terms.job_id:
        raise VerificationError("the checkpoint belongs to another job", code="invalid_checkpoint")
    return checked.archive
