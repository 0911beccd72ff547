"""Capped pipe reading, file tailing and child exit watching."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

from computemesh.executor.streams import TAIL_BYTES, CappedReader, ExitWatch, FileTail


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


async def test_file_tail_hands_over_each_appended_part_once(tmp_path: Path) -> None:
    path = tmp_path / "out"
    chunks: list[bytes] = []
    tail = FileTail(path, chunks.append, max_read=4)
    assert await tail.poll() == 0  # not created yet
    with path.open("ab") as writer:
        writer.write(b"hello ")
        writer.flush()
        await tail.poll()
        writer.write(b"world")
    await tail.drain()
    tail.close()
    assert chunks == [b"hell", b"o wo", b"rld"]  # at most max_read bytes per poll
    assert await tail.poll() == 0


async def test_file_tail_does_not_follow_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"host data")
    (tmp_path / "out").symlink_to(tmp_path / "secret")
    chunks: list[bytes] = []
    tail = FileTail(tmp_path / "out", chunks.append)
    await tail.drain()
    tail.close()
    assert chunks == []
