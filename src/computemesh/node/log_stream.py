"""Live output: what a running job writes, pushed to its consumer while it runs.

``LogPump`` is an ``executor.base.RunObserver``. Chunks the executor reports are buffered
per stream, at most ``max_pending`` bytes each (the rest is counted as dropped, never
kept), and flushed every ``flush_interval_s`` seconds as ``LogChunk`` messages of at most
``max_chunk`` bytes, numbered ``seq`` 0, 1, 2... per contract. So the consumer receives at
most ``2 x max_pending / flush_interval_s`` bytes a second, whatever the job prints, and
knows from ``dropped`` how much it did not see (the signed result keeps the first bytes).
"""

from __future__ import annotations

import asyncio
import codecs
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from computemesh.executor.base import ExecutionHandle, OutputStream
from computemesh.models.errors import MeshError
from computemesh.models.market import ContractTerms, LogChunk

log = logging.getLogger(__name__)

Push = Callable[[dict[str, Any]], Awaitable[None]]

FLUSH_INTERVAL_S = 0.25
MAX_PENDING_BYTES = 16 * 1024
MAX_CHUNK_BYTES = 16 * 1024


class _Pending:
    """One stream's bytes waiting to be sent, and how many were dropped since the last send."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.dropped = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")


class LogPump:
    """Buffers and pushes one run's output (see the module docstring)."""

    def __init__(
        self,
        *,
        terms: ContractTerms,
        push: Push,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        max_pending: int = MAX_PENDING_BYTES,
        max_chunk: int = MAX_CHUNK_BYTES,
    ) -> None:
        self.terms = terms
        self.push = push
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.max_chunk = max_chunk
        self.seq = 0
        self._pending: dict[OutputStream, _Pending] = {"stdout": _Pending(), "stderr": _Pending()}
        self._lock = asyncio.Lock()

    def output(self, stream: OutputStream, chunk: bytes) -> None:
        pending = self._pending[stream]
        room = max(0, self.max_pending - len(pending.data))
        pending.data += chunk[:room]
        pending.dropped += max(0, len(chunk) - room)

    async def running(self, handle: ExecutionHandle) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    async def ended(self, handle: ExecutionHandle) -> None:
        await self.flush(final=True)

    async def flush(self, *, final: bool = False) -> None:
        """Send what is pending, one chunk per ``max_chunk`` bytes, stdout first."""
        async with self._lock:
            for stream, pending in self._pending.items():
                while pending.data or pending.dropped:
                    piece = bytes(pending.data[: self.max_chunk])
                    del pending.data[: self.max_chunk]
                    text = pending.decoder.decode(piece, final=final and not pending.data)
                    await self._send(stream, text, pending.dropped)
                    pending.dropped = 0

    async def _send(self, stream: OutputStream, text: str, dropped: int) -> None:
        chunk = LogChunk(
            contract_id=self.terms.contract_id,
            job_id=self.terms.job_id,
            seq=self.seq,
            stream=stream,
            data=text,
            dropped=dropped,
        )
        self.seq += 1
        try:
            await self.push({"chunk": chunk.model_dump(mode="json")})
        except MeshError as exc:
            log.info("job %s: log chunk %d not delivered: %s", self.terms.job_id, chunk.seq, exc)
