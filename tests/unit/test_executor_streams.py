"""Capped pipe reading and child exit watching."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

from computemesh.executor.streams import TAIL_BYTES, CappedReader, ExitWatch


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv)


async def test_reader_keeps_the_head_counts_the_rest_and_keeps_a_tail() -> None:
    read_end, write_end = os.pipe()
    reader = CappedReader(read_end, cap=10)
    payload = b"0123456789" + b"x" * 100_000 + b"THE END"

    def write_all() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)

    await asyncio.gather(asyncio.to_thread(write_all), reader.wait_closed(5))
    assert reader.data == b"0123456789"
    assert reader.total == len(payload)
    assert reader.truncated
    assert reader.tail.endswith(b"THE END") and len(reader.tail) == TAIL_BYTES


async def test_reader_under_the_cap_is_not_truncated() -> None:
    read_end, write_end = os.pipe()
    reader = CappedReader(read_end, cap=100)
    os.write(write_end, b"short")
    os.close(write_end)
    await reader.wait_closed(5)
    assert (reader.data, reader.truncated) == (b"short", False)


async def test_reader_gives_up_after_the_grace_period() -> None:
    read_end, write_end = os.pipe()
    reader = CappedReader(read_end, cap=100)
    os.write(write_end, b"partial")
    await reader.wait_closed(0.2)
    assert reader.done.done() and reader.data == b"partial"
    os.close(write_end)
    reader.close()


async def test_exit_watch_reports_status_and_usage_and_kills_first() -> None:
    child = spawn(["sh", "-c", "exit 7"])
    calls: list[str] = []
    watch = ExitWatch(child.pid, lambda: calls.append("before reap"))
    ended = await asyncio.wait_for(watch.future, 10)
    child.returncode = os.waitstatus_to_exitcode(ended.status)
    assert os.WEXITSTATUS(ended.status) == 7
    assert ended.rusage is not None and ended.rusage.ru_maxrss > 0
    assert calls == ["before reap"]


async def test_exit_watch_sees_a_killed_child() -> None:
    child = spawn(["sleep", "30"])
    watch = ExitWatch(child.pid, lambda: None)
    os.kill(child.pid, signal.SIGKILL)
    ended = await asyncio.wait_for(watch.future, 10)
    child.returncode = os.waitstatus_to_exitcode(ended.status)
    assert os.WIFSIGNALED(ended.status) and os.WTERMSIG(ended.status) == signal.SIGKILL
