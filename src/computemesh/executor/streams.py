"""Watching a launched job from the event loop: its output pipes, its output files, its exit.

Pipes and exits are watched on raw descriptors registered with the running loop, so
nothing here uses asyncio's child watchers (which would reap the child before ``wait4``
could report its resource usage) and no thread is held per job. Output a job writes to a
file (wasm guests: wasmtime writes WASI stdout and stderr to files) is followed by
``FileTail``, polled from the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

READ_CHUNK = 1024 * 1024
TAIL_BYTES = 4096
PIPE_SIZE = 1024 * 1024


class CappedReader:
    """Reads one pipe to its end, keeping the first ``cap`` bytes and counting the rest.

    Memory use is bounded whatever the writer does: one reusable read buffer, at most
    ``cap`` kept bytes and a ``TAIL_BYTES`` window of the latest output (for telling why
    a job failed). ``on_chunk``, when given, sees every chunk as it is read (kept or
    not), on the event loop. Must be created inside a running event loop; takes
    ownership of ``fd`` and closes it when the pipe ends or ``close`` is called.
    """

    def __init__(self, fd: int, cap: int, on_chunk: Callable[[bytes], None] | None = None) -> None:
        self.fd = fd
        self.cap = cap
        self.on_chunk = on_chunk
        self.total = 0
        self._head = bytearray()
        self._tail = bytearray()
        self._buffer = bytearray(READ_CHUNK)
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(fd, False)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._loop.add_reader(fd, self._on_readable)

    @property
    def data(self) -> bytes:
        """The kept bytes (at most ``cap``)."""
        return bytes(self._head)

    @property
    def tail(self) -> bytes:
        """The last bytes read (at most ``TAIL_BYTES``), kept or not."""
        return bytes(self._tail)

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def _on_readable(self) -> None:
        try:
            count = os.readv(self.fd, [self._buffer])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            count = 0
        if count == 0:
            self.close()
            return
        chunk = memoryview(self._buffer)[:count]
        self._keep(chunk)
        if self.on_chunk is not None:
            self.on_chunk(bytes(chunk))

    def _keep(self, chunk: memoryview) -> None:
        room = self.cap - len(self._head)
        if room > 0:
            self._head += chunk[:room]
        self.total += len(chunk)
        self._tail += chunk[-TAIL_BYTES:]
        if len(self._tail) > TAIL_BYTES:
            del self._tail[:-TAIL_BYTES]

    async def wait_closed(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` seconds for the end of the pipe, then close it anyway."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.done), grace_s)
        self.close()

    def close(self) -> None:
        """Stop reading and close the descriptor; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.fd)
        os.close(self.fd)
        if not self.done.done():
            self.done.set_result(None)


class FileTail:
    """Follows a file that another thread appends to, handing each new part to ``on_chunk``.

    ``poll`` reads what was added since the last poll (at most ``max_read`` bytes, in a
    worker thread) and calls ``on_chunk`` with it on the event loop; ``drain`` polls until
    nothing is left. A file that does not exist yet reads as empty; the file is opened
    without following symlinks and read by offset, so a reader never moves the writer's
    position. Polls must not overlap (one follower per tail); ``close`` is idempotent.
    """

    def __init__(
        self, path: Path, on_chunk: Callable[[bytes], None], max_read: int = READ_CHUNK
    ) -> None:
        self.path = path
        self.on_chunk = on_chunk
        self.max_read = max_read
        self.offset = 0
        self._fd: int | None = None
        self._closed = False
        self._lock = threading.Lock()  # a cancelled poll's read may still run in its thread

    async def poll(self) -> int:
        """Hand what was added since the last poll to ``on_chunk``; returns its length."""
        chunk = await asyncio.to_thread(self._read_new)
        if chunk:
            self.on_chunk(chunk)
        return len(chunk)

    async def drain(self) -> None:
        """Poll until the file has nothing more to give."""
        while await self.poll():
            pass

    def _read_new(self) -> bytes:
        with self._lock:
            if self._closed:
                return b""
            if self._fd is None:
                try:
                    self._fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    return b""
            chunk = os.pread(self._fd, self.max_read, self.offset)
            self.offset += len(chunk)
            return chunk

    def close(self) -> None:
        """Stop following and close the file."""
        with self._lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


@dataclass(frozen=True)
class ChildExit:
    """A reaped child: its raw wait status, resource usage (None if unknown) and when."""

    status: int
    rusage: resource.struct_rusage | None
    monotonic: float


UNKNOWN_STATUS = 255 << 8
"""Wait status reported when the child was reaped by someone else (exit code 255)."""


class ExitWatch:
    """Resolves ``future`` once child ``pid`` has exited, reaping it with ``wait4``.

    ``before_reap`` runs after the child exited but before it is reaped, while its pid
    and process group id cannot be reused: the moment to kill whatever it left behind.
    Uses a pidfd where the kernel has them, else a helper thread that waits without
    reaping (``waitid`` with ``WNOWAIT``).
    """

    def __init__(self, pid: int, before_reap: Callable[[], None]) -> None:
        self.pid = pid
        self._before_reap = before_reap
        self._loop = asyncio.get_running_loop()
        self.future: asyncio.Future[ChildExit] = self._loop.create_future()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            threading.Thread(target=self._wait_in_thread, daemon=True).start()
        else:
            self._loop.add_reader(self._pidfd, self._on_exit)

    def _wait_in_thread(self) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_exit)

    def _on_exit(self) -> None:
        if self.future.done():
            return
        self._before_reap()
        try:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            self._resolve(ChildExit(UNKNOWN_STATUS, None, time.monotonic()))
            return
        if pid == 0:
            return
        self._resolve(ChildExit(status, rusage, time.monotonic()))

    def _resolve(self, outcome: ChildExit) -> None:
        self.close()
        self.future.set_result(outcome)

    def close(self) -> None:
        """Stop watching (the child is not reaped if it has not exited)."""
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
