"""A real nats-server: starting it, stopping it by pid, and clients surviving its restart."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from computemesh.models.errors import TransportError
from computemesh.transport import (
    Message,
    NatsServerInfo,
    NatsTransport,
    is_process_alive,
    start_nats_server,
    stop_process,
)
from computemesh.transport.natsserver import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

RECONNECT_BOUND_S = 20.0


@pytest.fixture
def servers() -> Iterator[list[NatsServerInfo]]:
    """Servers a test started; whatever is still running is stopped at teardown."""
    started: list[NatsServerInfo] = []
    yield started
    for server in started:
        stop_process(server.pid)


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def processes_using(path: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(path) in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_started_server_is_reachable_and_stops_by_pid(
    tmp_path: Path, servers: list[NatsServerInfo]
) -> None:
    server = start_nats_server(tmp_path / "nats")
    servers.append(server)

    assert server.url == f"nats://127.0.0.1:{server.port}"
    assert accepts(server.port)
    assert is_process_alive(server.pid)
    assert (tmp_path / "nats" / "jetstream").is_dir()
    assert "Server is ready" in server.log_file.read_text()

    assert stop_process(server.pid) is True
    assert not is_process_alive(server.pid)
    assert not accepts(server.port)
    assert stop_process(server.pid) is False


async def test_max_payload_reaches_clients(tmp_path: Path, servers: list[NatsServerInfo]) -> None:
    server = start_nats_server(tmp_path / "nats", max_payload=100_000, jetstream=False)
    servers.append(server)

    transport = await NatsTransport.connect(server.url)
    try:
        assert transport.max_payload == 100_000
    finally:
        await transport.close()


def test_a_taken_port_is_refused_before_launch(
    tmp_path: Path, servers: list[NatsServerInfo]
) -> None:
    server = start_nats_server(tmp_path / "first")
    servers.append(server)

    with pytest.raises(TransportError) as caught:
        start_nats_server(tmp_path / "second", port=server.port)

    assert caught.value.code == "port_in_use"
    assert processes_using(tmp_path / "second") == []


def test_a_server_that_cannot_start_reports_its_log_and_is_gone(tmp_path: Path) -> None:
    store = tmp_path / "nats"

    with pytest.raises(TransportError) as caught:
        start_nats_server(store, max_payload=128 * 1024 * 1024)

    assert caught.value.code == "nats_server_failed"
    assert "max_payload" in caught.value.message
    assert processes_using(store) == []


async def test_client_reconnects_after_server_restart_on_same_port(
    tmp_path: Path, servers: list[NatsServerInfo], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="computemesh.transport.nats")
    store, port = tmp_path / "nats", free_port()
    servers.append(start_nats_server(store, port=port))
    requester = await NatsTransport.connect(f"nats://127.0.0.1:{port}", reconnect_time_wait=0.25)
    responder = await NatsTransport.connect(f"nats://127.0.0.1:{port}", reconnect_time_wait=0.25)
    try:

        async def echo(message: Message) -> None:
            await responder.respond(message, message.data)

        await responder.subscribe("svc.echo", echo)
        await responder.flush()
        assert await requester.request("svc.echo", b"before", timeout=2.0) == b"before"

        assert await asyncio.to_thread(stop_process, servers[-1].pid)
        servers.append(await asyncio.to_thread(start_nats_server, store, port=port))

        assert await request_until_answered(requester, b"after") == b"after"
        assert await logged(caplog, "disconnected from NATS")
        assert await logged(caplog, "reconnected to NATS")
    finally:
        await requester.close()
        await responder.close()


async def request_until_answered(transport: NatsTransport, data: bytes) -> bytes:
    """Retry a request (each bounded) until it is answered or RECONNECT_BOUND_S passes."""
    deadline = time.monotonic() + RECONNECT_BOUND_S
    while True:
        try:
            return await transport.request("svc.echo", data, timeout=0.5)
        except TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def logged(caplog: pytest.LogCaptureFixture, prefix: str) -> bool:
    """Whether a record starting with ``prefix`` is logged within a few seconds."""
    for _ in range(50):
        if any(record.getMessage().startswith(prefix) for record in caplog.records):
            return True
        await asyncio.sleep(0.1)
    return False
