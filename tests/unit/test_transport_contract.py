"""The Transport contract, run against the in-memory bus and against a real nats-server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from computemesh.models.errors import RequestTimeout, TransportError
from computemesh.transport import (
    MemoryHub,
    MemoryTransport,
    Message,
    NatsServerInfo,
    NatsTransport,
    Subscription,
    Transport,
    start_nats_server,
    stop_process,
)

CONTRACT_MAX_PAYLOAD = 256 * 1024
WAIT_S = 5.0
QUIET_S = 0.3

pytestmark = pytest.mark.timeout(60)

Connect = Callable[[], Awaitable[Transport]]


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServerInfo]:
    store: Path = tmp_path_factory.mktemp("nats")
    server = start_nats_server(store, max_payload=CONTRACT_MAX_PAYLOAD, ready_timeout=15.0)
    try:
        yield server
    finally:
        stop_process(server.pid)


@pytest.fixture(params=["memory", pytest.param("nats", marks=pytest.mark.integration)])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """Opens transports that all share one bus; closes them after the test."""
    opened: list[Transport] = []
    make = _memory_factory() if request.param == "memory" else _nats_factory(request)

    async def open_transport() -> Transport:
        transport = await make()
        opened.append(transport)
        return transport

    yield open_transport
    for transport in opened:
        await asyncio.wait_for(transport.close(), timeout=10.0)


def _memory_factory() -> Connect:
    hub = MemoryHub()

    async def make() -> Transport:
        return MemoryTransport(hub, max_payload=CONTRACT_MAX_PAYLOAD, drain_timeout=2.0)

    return make


def _nats_factory(request: pytest.FixtureRequest) -> Connect:
    server: NatsServerInfo = request.getfixturevalue("nats_server")

    async def make() -> Transport:
        return await NatsTransport.connect(server.url, connect_timeout=5.0, drain_timeout=2.0)

    return make


class Inbox:
    """A handler that records what it receives and lets a test wait for it."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Condition()

    async def __call__(self, message: Message) -> None:
        async with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    @property
    def payloads(self) -> list[bytes]:
        return [message.data for message in self.messages]

    async def wait_for(self, count: int) -> list[bytes]:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.messages) >= count), WAIT_S
            )
        return self.payloads


async def flushed(*transports: Transport) -> None:
    for transport in transports:
        await transport.flush()


class TestTransportContract:
    async def test_reports_max_payload(self, connect: Connect) -> None:
        transport = await connect()

        assert transport.max_payload == CONTRACT_MAX_PAYLOAD
        assert isinstance(transport, Transport)

    async def test_publish_fans_out_in_order(self, connect: Connect) -> None:
        publisher, first, second = await connect(), await connect(), await connect()
        inboxes = [Inbox(), Inbox(), Inbox()]
        await first.subscribe("fan.out", inboxes[0])
        await first.subscribe("fan.out", inboxes[1])
        await second.subscribe("fan.out", inboxes[2])

        for index in range(5):
            await publisher.publish("fan.out", b"%d" % index)

        expected = [b"0", b"1", b"2", b"3", b"4"]
        for inbox in inboxes:
            assert await inbox.wait_for(5) == expected
        assert inboxes[0].messages[0] == Message(subject="fan.out", data=b"0", reply=None)

    async def test_wildcard_subscriptions(self, connect: Connect) -> None:
        publisher, subscriber = await connect(), await connect()
        one_token, tail, middle = Inbox(), Inbox(), Inbox()
        await subscriber.subscribe("jobs.*", one_token)
        await subscriber.subscribe("jobs.>", tail)
        await subscriber.subscribe("jobs.*.done", middle)

        for subject in ("jobs.a", "jobs.a.done", "jobs.a.b.c", "other.a", "jobs"):
            await publisher.publish(subject, subject.encode())

        assert await tail.wait_for(3) == [b"jobs.a", b"jobs.a.done", b"jobs.a.b.c"]
        assert await one_token.wait_for(1) == [b"jobs.a"]
        assert await middle.wait_for(1) == [b"jobs.a.done"]
        await asyncio.sleep(QUIET_S)
        assert len(tail.messages) == 3
        assert len(one_token.messages) == 1
        assert len(middle.messages) == 1

    async def test_queue_group_delivers_each_message_once(self, connect: Connect) -> None:
        publisher, first, second = await connect(), await connect(), await connect()
        members, plain = [Inbox(), Inbox(), Inbox()], Inbox()
        await first.subscribe("work.items", members[0], queue="workers")
        await first.subscribe("work.items", members[1], queue="workers")
        await second.subscribe("work.items", members[2], queue="workers")
        await second.subscribe("work.items", plain)

        sent = [b"item-%d" % index for index in range(20)]
        for payload in sent:
            await publisher.publish("work.items", payload)

        assert await plain.wait_for(20) == sent
        await asyncio.sleep(QUIET_S)
        delivered = [payload for inbox in members for payload in inbox.payloads]
        assert sorted(delivered) == sorted(sent)

    async def test_request_reply(self, connect: Connect) -> None:
        requester, responder = await connect(), await connect()
        seen = Inbox()

        async def respond(message: Message) -> None:
            await seen(message)
            await responder.respond(message, b"echo:" + message.data)

        await responder.subscribe("svc.echo", respond)

        assert await requester.request("svc.echo", b"hello", timeout=WAIT_S) == b"echo:hello"
        assert await requester.request("svc.echo", b"again", timeout=WAIT_S) == b"echo:again"
        reply = seen.messages[0].reply
        assert reply is not None and reply.startswith("_INBOX.")

    async def test_request_timeout_raises_request_timeout(self, connect: Connect) -> None:
        requester, silent = await connect(), await connect()
        await silent.subscribe("svc.silent", Inbox())

        with pytest.raises(RequestTimeout) as caught:
            await requester.request("svc.silent", b"anyone?", timeout=0.3)

        assert caught.value.code == "timeout"

    async def test_no_responders(self, connect: Connect) -> None:
        requester = await connect()

        with pytest.raises(TransportError) as caught:
            await requester.request("svc.nobody", b"anyone?", timeout=WAIT_S)

        assert caught.value.code == "no_responders"
        assert not isinstance(caught.value, RequestTimeout)

    async def test_unsubscribe_stops_delivery(self, connect: Connect) -> None:
        publisher, subscriber = await connect(), await connect()
        inbox, witness = Inbox(), Inbox()
        subscription = await subscriber.subscribe("news.today", inbox)
        await subscriber.subscribe("news.>", witness)
        await publisher.publish("news.today", b"before")
        await inbox.wait_for(1)

        await subscription.unsubscribe()
        await subscription.unsubscribe()
        await flushed(subscriber)
        await publisher.publish("news.today", b"after")

        assert await witness.wait_for(2) == [b"before", b"after"]
        await asyncio.sleep(QUIET_S)
        assert inbox.payloads == [b"before"]

    async def test_handler_may_unsubscribe_itself(self, connect: Connect) -> None:
        publisher, subscriber = await connect(), await connect()
        finished = Inbox()
        handles: list[Subscription] = []

        async def once(message: Message) -> None:
            await handles[0].unsubscribe()
            await finished(message)

        handles.append(await subscriber.subscribe("once.only", once))
        await publisher.publish("once.only", b"1")

        assert await finished.wait_for(1) == [b"1"]
        await publisher.publish("once.only", b"2")
        await asyncio.sleep(QUIET_S)
        assert finished.payloads == [b"1"]

    async def test_oversized_payload_is_rejected(self, connect: Connect) -> None:
        publisher, subscriber = await connect(), await connect()
        inbox = Inbox()
        await subscriber.subscribe("big.data", inbox)
        too_big = b"x" * (publisher.max_payload + 1)

        with pytest.raises(TransportError) as on_publish:
            await publisher.publish("big.data", too_big)
        with pytest.raises(TransportError) as on_request:
            await publisher.request("big.data", too_big, timeout=WAIT_S)

        assert on_publish.value.code == "payload_too_large"
        assert on_request.value.code == "payload_too_large"
        await publisher.publish("big.data", b"y" * publisher.max_payload)
        assert [len(payload) for payload in await inbox.wait_for(1)] == [publisher.max_payload]

    async def test_failing_handler_does_not_stop_delivery(
        self, connect: Connect, caplog: pytest.LogCaptureFixture
    ) -> None:
        publisher, subscriber = await connect(), await connect()
        survived = Inbox()

        async def fragile(message: Message) -> None:
            if message.data == b"boom":
                raise RuntimeError("handler exploded")
            await survived(message)

        await subscriber.subscribe("fragile.topic", fragile)
        with caplog.at_level(logging.ERROR, logger="computemesh.transport"):
            for payload in (b"boom", b"fine", b"boom", b"still fine"):
                await publisher.publish("fragile.topic", payload)
            assert await survived.wait_for(2) == [b"fine", b"still fine"]

        failures = [record for record in caplog.records if record.exc_info]
        assert len(failures) == 2
        assert all("fragile.topic" in record.getMessage() for record in failures)

    async def test_slow_handler_does_not_block_other_subscriptions(self, connect: Connect) -> None:
        publisher, subscriber = await connect(), await connect()
        release = asyncio.Event()
        fast = Inbox()

        async def stuck(message: Message) -> None:
            await release.wait()

        await subscriber.subscribe("busy.lane", stuck)
        await subscriber.subscribe("busy.lane", fast)
        try:
            for index in range(3):
                await publisher.publish("busy.lane", b"%d" % index)
            assert await fast.wait_for(3) == [b"0", b"1", b"2"]
        finally:
            release.set()

    async def test_respond_needs_a_reply_subject(self, connect: Connect) -> None:
        transport = await connect()

        with pytest.raises(TransportError) as caught:
            await transport.respond(Message(subject="a.b", data=b"x"), b"answer")

        assert caught.value.code == "no_reply_subject"

    async def test_invalid_subjects_are_rejected(self, connect: Connect) -> None:
        transport = await connect()
        inbox = Inbox()

        for subject in ("", "a..b", "a b", ".a", "a.", "a.*", "a.>", "a\r\nPUB x"):
            with pytest.raises(ValueError):
                await transport.publish(subject, b"x")
        for pattern in ("a.>.b", "a*", "a.b>", "a..b"):
            with pytest.raises(ValueError):
                await transport.subscribe(pattern, inbox)
        with pytest.raises(ValueError):
            await transport.subscribe("a.b", inbox, queue="bad queue")

    async def test_close_is_idempotent_and_final(self, connect: Connect) -> None:
        transport = await connect()
        await transport.subscribe("closing.soon", Inbox())

        await transport.close()
        await transport.close()

        for attempt in (
            transport.publish("closing.soon", b"x"),
            transport.request("closing.soon", b"x", timeout=1.0),
            transport.subscribe("closing.soon", Inbox()),
            transport.flush(),
        ):
            with pytest.raises(TransportError) as caught:
                await attempt
            assert caught.value.code == "closed"
