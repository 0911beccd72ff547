"""Network access in the real bubblewrap sandbox: only a job that declares it, on a node
that allows it, reaches a TCP server the test runs on the host's loopback."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from computemesh.executor import (
    ExecutionRequest,
    ProcessExecutor,
    SandboxLimits,
    bubblewrap_available,
    run_to_completion,
)
from computemesh.models.errors import ExecutionError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not bubblewrap_available(), reason="bubblewrap (bwrap) is not installed"),
    pytest.mark.timeout(60),
]

LIMITS = SandboxLimits(wall_time_s=20, cpu_time_s=20, memory_mb=256, max_processes=32)
GREETING = b"hello from the sandbox"


def connecting_job(port: int, *, network: bool) -> ExecutionRequest:
    code = (
        "import socket\n"
        "try:\n"
        f"    with socket.create_connection(('127.0.0.1', {port}), timeout=5) as s:\n"
        f"        s.sendall({GREETING!r})\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('blocked', exc.errno)\n"
    )
    return ExecutionRequest(
        job_id=f"net-{secrets.token_hex(4)}",
        command=["python3", "-c", code],
        env={},
        inputs=[],
        outputs=[],
        limits=LIMITS,
        network=network,
    )


@pytest.fixture
def server() -> Iterator[socket.socket]:
    """A TCP server on the host's 127.0.0.1; connections wait in its backlog."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    try:
        yield listener
    finally:
        listener.close()


def received(listener: socket.socket) -> bytes | None:
    """What the first connection sent, or None when nothing connected."""
    try:
        connection, _ = listener.accept()
    except TimeoutError:
        return None
    with connection:
        connection.settimeout(5)
        return connection.recv(len(GREETING))


async def test_a_job_allowed_network_reaches_a_host_server(
    server: socket.socket, tmp_path: Path
) -> None:
    executor = ProcessExecutor(sandbox=True, allow_network=True)
    port = server.getsockname()[1]
    result = await run_to_completion(executor, connecting_job(port, network=True), tmp_path)
    assert result.status == "completed", result.stderr
    assert result.stdout == b"connected\n"
    assert received(server) == GREETING


async def test_a_job_that_does_not_declare_network_gets_none_on_a_node_that_allows_it(
    server: socket.socket, tmp_path: Path
) -> None:
    executor = ProcessExecutor(sandbox=True, allow_network=True)
    port = server.getsockname()[1]
    result = await run_to_completion(executor, connecting_job(port, network=False), tmp_path)
    assert result.status == "completed", result.stderr
    assert result.stdout.startswith(b"blocked")
    assert received(server) is None


async def test_a_node_that_does_not_allow_network_refuses_the_job_before_it_runs(
    server: socket.socket, tmp_path: Path
) -> None:
    executor = ProcessExecutor(sandbox=True)
    port = server.getsockname()[1]
    with pytest.raises(ExecutionError) as refused:
        await run_to_completion(executor, connecting_job(port, network=True), tmp_path)
    assert refused.value.code == "network_not_allowed"
    assert "--allow-network" in (refused.value.hint or "")
    assert received(server) is None
    assert not any(tmp_path.iterdir())
