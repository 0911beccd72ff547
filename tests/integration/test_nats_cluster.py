"""A real 3-server NATS cluster: routes, clients failing over, subscriptions and requests
surviving the loss of the server they used."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from computemesh.actor import Actor, Inbound, behaviours
from computemesh.identity import Identity
from computemesh.models.errors import TransportError
from computemesh.transport import Message, NatsServerInfo, NatsTransport, stop_process
from computemesh.transport.natsserver import (
    accepts_clients,
    routed_peers,
    start_nats_cluster,
    start_nats_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FAILOVER_BOUND_S = 20.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServerInfo]]:
    servers = start_nats_cluster(tmp_path / "nats", 3)
    yield servers
    for server in servers:
        stop_process(server.pid)


def urls(servers: list[NatsServerInfo]) -> str:
    return ",".join(server.url for server in servers)


def server_of(transport: NatsTransport, servers: list[NatsServerInfo]) -> NatsServerInfo:
    connected = transport.connected_server
    return next(server for server in servers if server.url.endswith(f"//{connected}"))


def kill(server: NatsServerInfo) -> None:
    os.kill(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while accepts_clients(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not accepts_clients(server)


async def eventually(check: Any, what: str) -> None:
    deadline = time.monotonic() + FAILOVER_BOUND_S
    while not await check():
        assert time.monotonic() < deadline, f"{what} within {FAILOVER_BOUND_S}s"
        await asyncio.sleep(0.1)


def test_every_server_routes_to_every_peer(cluster: list[NatsServerInfo]) -> None:
    names = {server.cluster.server_name for server in cluster if server.cluster}
    assert names == {"hub-1", "hub-2", "hub-3"}
    for server in cluster:
        assert server.cluster is not None
        assert routed_peers(server) == names - {server.cluster.server_name}
        assert (server.store_dir / "jetstream").is_dir()
        assert server.log_file.name == f"{server.cluster.server_name}.log"


async def test_a_message_published_on_one_server_reaches_subscribers_on_another(
    cluster: list[NatsServerInfo],
) -> None:
    subscriber = await NatsTransport.connect(cluster[0].url)
    publisher = await NatsTransport.connect(cluster[2].url)
    received: asyncio.Queue[bytes] = asyncio.Queue()
    try:

        async def keep(message: Message) -> None:
            await received.put(message.data)

        await subscriber.subscribe("probe.routes", keep)

        async def delivered() -> bool:
            await publisher.publish("probe.routes", b"across")
            try:
                return await asyncio.wait_for(received.get(), 0.2) == b"across"
            except TimeoutError:
                return False

        await eventually(delivered, "a message crossed the cluster")
    finally:
        await subscriber.close()
        await publisher.close()


async def test_a_subscription_survives_the_loss_of_its_server(
    cluster: list[NatsServerInfo], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="computemesh.transport.nats")
    subscriber = await NatsTransport.connect(urls(cluster), reconnect_time_wait=0.25)
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def keep(message: Message) -> None:
        await received.put(message.data)

    await subscriber.subscribe("probe.survive", keep)
    lost = server_of(subscriber, cluster)
    survivors = [server for server in cluster if server is not lost]
    publisher = await NatsTransport.connect(survivors[0].url)
    try:
        await asyncio.to_thread(kill, lost)

        async def delivered() -> bool:
            await publisher.publish("probe.survive", b"after")
            try:
                return await asyncio.wait_for(received.get(), 0.2) == b"after"
            except TimeoutError:
                return False

        await eventually(delivered, "the subscription was renewed on a surviving server")
        assert subscriber.connected_server in {server.url.split("//")[1] for server in survivors}
        messages = [record.getMessage() for record in caplog.records]
        assert any(text.startswith("disconnected from NATS") for text in messages)
        assert any(text.startswith("reconnected to NATS") for text in messages)
    finally:
        await subscriber.close()
        await publisher.close()


async def test_an_idempotent_request_is_answered_across_the_loss_of_the_responders_server(
    cluster: list[NatsServerInfo],
) -> None:
    responder_transport = await NatsTransport.connect(urls(cluster), reconnect_time_wait=0.25)
    responder = Actor(identity=Identity.generate(), transport=responder_transport)
    answered: list[Inbound] = []

    async def fetch(inbound: Inbound) -> dict[str, Any]:
        answered.append(inbound)
        return {"status": "finished", "result": None}

    responder.register(behaviours.RESULT_FETCH, fetch)
    await responder.start()
    lost = server_of(responder_transport, cluster)
    survivor = next(server for server in cluster if server is not lost)
    asker_transport = await NatsTransport.connect(survivor.url)
    asker = Actor(identity=Identity.generate(), transport=asker_transport)
    try:
        await asyncio.to_thread(kill, lost)
        reply = await asker.request(
            responder.did, behaviours.RESULT_FETCH, {"contract_id": "c"}, timeout=15.0
        )
        assert reply == {"status": "finished", "result": None}
        assert responder.rejections == {}
        assert len({inbound.envelope.nonce for inbound in answered}) == len(answered)
    finally:
        await asker.stop()
        await responder.stop()
        await asker_transport.close()
        await responder_transport.close()


async def test_a_killed_server_restarted_rejoins_the_cluster(
    cluster: list[NatsServerInfo],
) -> None:
    lost = cluster[1]
    await asyncio.to_thread(kill, lost)
    assert all(len(routed_peers(server)) >= 1 for server in (cluster[0], cluster[2]))

    again = await asyncio.to_thread(
        start_nats_server,
        lost.store_dir,
        port=lost.port,
        log_file=lost.log_file,
        cluster=lost.cluster,
        routes_needed=2,
    )
    cluster[1] = again

    assert again.port == lost.port
    assert routed_peers(again) == {"hub-1", "hub-3"}


async def test_a_client_given_only_dead_servers_fails_with_each_url(
    cluster: list[NatsServerInfo],
) -> None:
    for server in cluster:
        await asyncio.to_thread(kill, server)

    with pytest.raises(TransportError) as failed:
        await NatsTransport.connect(urls(cluster), connect_timeout=2.0)

    assert failed.value.code == "connect_failed"
    assert all(server.url in failed.value.message for server in cluster)
