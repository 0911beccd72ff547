"""NatsTransport.connect failing: bounded, with a clear error, and without a server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from computemesh.models.errors import TransportError
from computemesh.transport import NatsTransport
from computemesh.transport.natsserver import free_port

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def silent_listener() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never says anything."""
    connections: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()


async def test_refused_connection_fails_fast_with_the_url() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()

    with pytest.raises(TransportError) as caught:
        await NatsTransport.connect(url, connect_timeout=5.0)

    assert time.monotonic() - started < 3.0
    assert caught.value.code == "connect_failed"
    assert url in caught.value.message
    assert caught.value.hint
    assert isinstance(caught.value.__cause__, OSError)


async def test_every_server_of_a_list_is_tried() -> None:
    urls = [f"nats://127.0.0.1:{free_port()}" for _ in range(2)]

    with pytest.raises(TransportError) as caught:
        await NatsTransport.connect(urls, connect_timeout=5.0)

    assert caught.value.code == "connect_failed"
    assert all(url in caught.value.message for url in urls)


async def test_a_server_that_never_answers_times_out(silent_listener: int) -> None:
    started = time.monotonic()

    with pytest.raises(TransportError) as caught:
        await NatsTransport.connect(f"nats://127.0.0.1:{silent_listener}", connect_timeout=0.5)

    assert caught.value.code == "connect_failed"
    assert time.monotonic() - started < 5.0


async def test_credentials_stay_out_of_the_error() -> None:
    port = free_port()

    with pytest.raises(TransportError) as caught:
        await NatsTransport.connect(f"nats://alice:s3cret@127.0.0.1:{port}", connect_timeout=2.0)

    assert "s3cret" not in str(caught.value)
    assert f"nats://127.0.0.1:{port}" in caught.value.message


async def test_an_empty_server_list_is_refused() -> None:
    with pytest.raises(ValueError):
        await NatsTransport.connect([])
