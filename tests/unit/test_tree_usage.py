"""Metering a live process tree from /proc: what a checkpoint is signed with."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from computemesh.executor.tree_usage import parse_stat, thread_cpu_seconds, tree_usage

BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def test_a_command_name_with_spaces_and_parentheses_parses() -> None:
    fields = ["S", "7", *["0"] * 9, "100", "50", "25", "25", *["0"] * 6, "3"]
    stat = parse_stat(42, f"42 (odd) name (x) {' '.join(fields)}")
    assert (stat.pid, stat.ppid, stat.cpu_ticks) == (42, 7, 200)
    assert stat.rss_kb > 0


def test_a_grandchild_burning_cpu_counts_toward_its_tree() -> None:
    grandchild = (
        f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN.format(s=3)!r}])"
    )
    with subprocess.Popen([sys.executable, "-c", grandchild]) as root:
        try:
            deadline = time.monotonic() + 60
            while tree_usage(root.pid).cpu_s < 0.3:
                assert time.monotonic() < deadline, "the tree never used 0.3 s of CPU"
                time.sleep(0.05)
            assert tree_usage(root.pid).max_rss_kb > 0
        finally:
            root.kill()  # the grandchild ends by itself within seconds
    assert tree_usage(root.pid).cpu_s == 0.0  # reaped: nothing left to read


def test_a_thread_s_cpu_time_and_none_once_it_ended() -> None:
    started, done = threading.Event(), threading.Event()

    def burn() -> None:
        started.set()
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        done.wait(60)

    thread = threading.Thread(target=burn)
    thread.start()
    started.wait(60)
    deadline = time.monotonic() + 60
    while thread_cpu_seconds(thread.native_id or 0) < 0.2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    done.set()
    thread.join()
    while thread_cpu_seconds(thread.native_id or 0) != 0.0:  # the OS thread ends a bit later
        assert time.monotonic() < deadline
        time.sleep(0.02)
