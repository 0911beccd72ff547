"""Behaviour of the in-memory bus beyond the shared transport contract."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from computemesh.models.errors import TransportError
from computemesh.transport import MemoryHub, MemoryTransport, Message, MessageHandler

pytestmark = pytest.mark.timeout(30)

WAIT_S = 5.0
POLL_S = 0.01


@pytest.fixture
async def hub() -> AsyncIterator[MemoryHub]:
    yield MemoryHub()


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate()`` for up to WAIT_S seconds; fail the test if it never holds."""
    for _ in range(int(WAIT_S / POLL_S)):
        if predicate():
            return
        await asyncio.sleep(POLL_S)
    pytest.fail("the condition did not hold in time")


def test_max_payload_must_be_positive(hub: MemoryHub) -> None:
    with pytest.raises(ValueError):
        MemoryTransport(hub, max_payload=0)


async def test_delivery_is_asynchronous(hub: MemoryHub) -> None:
    transport = MemoryTransport(hub)
    received: list[bytes] = []

    async def record(message: Message) -> None:
        received.append(message.data)

    await transport.subscribe("a.b", record)
    await transport.publish("a.b", b"1")

    assert received == []
    await until(lambda: received == [b"1"])
    await transport.close()


async def test_queue_group_members_take_turns(hub: MemoryHub) -> None:
    transport = MemoryTransport(hub)
    counts = [0, 0, 0]

    def member(index: int) -> MessageHandler:
        async def handle(message: Message) -> None:
            counts[index] += 1

        return handle

    for index in range(3):
        await transport.subscribe("jobs.new", member(index), queue="workers")
    for _ in range(30):
        await transport.publish("jobs.new", b"job")

    await until(lambda: sum(counts) == 30)
    assert counts == [10, 10, 10]
    await transport.close()


async def test_close_delivers_what_was_already_queued(hub: MemoryHub) -> None:
    publisher, subscriber = MemoryTransport(hub), MemoryTransport(hub)
    received: list[bytes] = []

    async def record(message: Message) -> None:
        await asyncio.sleep(0)
        received.append(message.data)

    await subscriber.subscribe("queued.work", record)
    for index in range(5):
        await publisher.publish("queued.work", b"%d" % index)
    await subscriber.close()

    assert received == [b"0", b"1", b"2", b"3", b"4"]
    await publisher.publish("queued.work", b"late")
    await asyncio.sleep(0.05)
    assert len(received) == 5
    await publisher.close()


async def test_close_cancels_handlers_that_outlive_the_drain(hub: MemoryHub) -> None:
    transport = MemoryTransport(hub, drain_timeout=0.1)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def stuck(message: Message) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await transport.subscribe("stuck.forever", stuck)
    await transport.publish("stuck.forever", b"x")
    await asyncio.wait_for(started.wait(), WAIT_S)

    await asyncio.wait_for(transport.close(), WAIT_S)
    assert cancelled.is_set()


async def test_close_ends_waiting_requests(hub: MemoryHub) -> None:
    requester, silent = MemoryTransport(hub), MemoryTransport(hub)
    arrived = asyncio.Event()

    async def ignore(message: Message) -> None:
        arrived.set()

    await silent.subscribe("svc.silent", ignore)
    pending = asyncio.create_task(requester.request("svc.silent", b"?", timeout=60.0))
    await asyncio.wait_for(arrived.wait(), WAIT_S)
    await requester.close()

    with pytest.raises(TransportError) as caught:
        await asyncio.wait_for(pending, WAIT_S)
    assert caught.value.code == "closed"
    await silent.close()


async def test_handler_may_close_its_own_transport(hub: MemoryHub) -> None:
    transport = MemoryTransport(hub)
    closed = asyncio.Event()

    async def close_now(message: Message) -> None:
        await transport.close()
        closed.set()

    await transport.subscribe("shut.down", close_now)
    await transport.publish("shut.down", b"")

    await asyncio.wait_for(closed.wait(), WAIT_S)
    await asyncio.wait_for(transport.close(), WAIT_S)


async def test_slow_consumer_drops_beyond_its_pending_limit(
    hub: MemoryHub, caplog: pytest.LogCaptureFixture
) -> None:
    transport = MemoryTransport(hub, pending_limit=2)
    received: list[bytes] = []

    async def record(message: Message) -> None:
        received.append(message.data)

    await transport.subscribe("fire.hose", record)
    with caplog.at_level(logging.WARNING, logger="computemesh.transport.memory"):
        for index in range(5):
            await transport.publish("fire.hose", b"%d" % index)

    await until(lambda: len(received) == 2)
    await asyncio.sleep(0.05)
    assert received == [b"0", b"1"]
    assert sum("slow consumer" in record.getMessage() for record in caplog.records) == 3
    await transport.close()


async def test_wildcard_subscribers_also_see_replies(hub: MemoryHub) -> None:
    transport = MemoryTransport(hub)
    watched: list[str] = []

    async def watch(message: Message) -> None:
        watched.append(message.subject)

    async def answer(message: Message) -> None:
        await transport.respond(message, b"ok")

    await transport.subscribe("_INBOX.>", watch)
    await transport.subscribe("svc.ok", answer)

    assert await transport.request("svc.ok", b"?", timeout=WAIT_S) == b"ok"
    await until(lambda: len(watched) == 1)
    assert watched[0].startswith("_INBOX.")
    await transport.close()


async def test_transports_on_separate_hubs_are_isolated() -> None:
    left, right = MemoryTransport(MemoryHub()), MemoryTransport(MemoryHub())

    async def answer(message: Message) -> None:
        await right.respond(message, b"ok")

    await right.subscribe("svc.ok", answer)

    with pytest.raises(TransportError) as caught:
        await left.request("svc.ok", b"?", timeout=WAIT_S)
    assert caught.value.code == "no_responders"
    await left.close()
    await right.close()
