"""Idempotent requests retried across a lost reply or an absent recipient, as a new envelope."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from computemesh.actor import Actor, Inbound, behaviours
from computemesh.actor.runtime import RequestRetry
from computemesh.identity import Identity
from computemesh.models.errors import MeshError, RemoteError, RequestTimeout, TransportError
from computemesh.transport import MemoryHub, MemoryTransport
from computemesh.transport.base import Message

pytestmark = pytest.mark.timeout(30)

FAST_RETRY = RequestRetry(attempts=4, first_pause_s=0.01, max_pause_s=0.05)


class LossyHub(MemoryHub):
    """A bus that loses the first ``count`` requests of ``behavior`` in flight, as a hub
    that fails over loses what it was carrying (the sender sees no reply)."""

    def __init__(self, behavior: str, count: int) -> None:
        super().__init__()
        self.behavior = behavior
        self.left_to_drop = count
        self.dropped = 0

    def route(self, message: Message) -> int:
        if self.left_to_drop > 0 and message.reply is not None and self._carries_behavior(message):
            self.left_to_drop -= 1
            self.dropped += 1
            return 1
        return super().route(message)

    def _carries_behavior(self, message: Message) -> bool:
        try:
            envelope = json.loads(message.data)
        except ValueError:
            return False
        return isinstance(envelope, dict) and envelope.get("beh") == self.behavior


class Recipient:
    """A provider-like actor whose answers a test can withhold or refuse."""

    def __init__(self, hub: MemoryHub) -> None:
        self.actor = Actor(identity=Identity.generate(), transport=MemoryTransport(hub))
        self.seen: list[Inbound] = []
        self.silent_for = 0
        self.refuse = False
        answered = (
            behaviours.RESULT_FETCH,
            behaviours.COMMIT,
            behaviours.DISCOVER,
            behaviours.CHECKPOINT_FETCH,
            behaviours.PING,
        )
        for behavior in answered:
            self.actor.register(behavior, self.answer)

    async def answer(self, inbound: Inbound) -> dict[str, Any]:
        self.seen.append(inbound)
        if self.refuse:
            raise MeshError("no such allocation for you here", code="unknown_allocation")
        if len(self.seen) <= self.silent_for:
            await asyncio.sleep(60)
        return {"got": inbound.payload}


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[MemoryHub, Actor, Recipient]]:
    hub = MemoryHub()
    asker = Actor(identity=Identity.generate(), transport=MemoryTransport(hub), retry=FAST_RETRY)
    recipient = Recipient(hub)
    await asker.start()
    yield hub, asker, recipient
    await asker.stop()
    await recipient.actor.stop()


async def test_a_lost_reply_is_retried_as_a_fresh_envelope(mesh: Any) -> None:
    _, asker, recipient = mesh
    await recipient.actor.start()
    recipient.silent_for = 1

    reply = await asker.request(
        recipient.actor.did, behaviours.RESULT_FETCH, {"contract_id": "c1"}, timeout=2.0
    )

    assert reply == {"got": {"contract_id": "c1"}}
    first, second = recipient.seen
    assert first.payload == second.payload
    assert first.envelope.nonce != second.envelope.nonce
    assert recipient.actor.rejections == {}


async def test_a_recipient_that_comes_back_is_reached(mesh: Any) -> None:
    _, asker, recipient = mesh

    async def come_back() -> None:
        await asyncio.sleep(0.05)
        await recipient.actor.start()

    returning = asyncio.create_task(come_back())
    reply = await asker.request(
        recipient.actor.did, behaviours.COMMIT, {"proposal": "p"}, timeout=3.0
    )
    await returning

    assert reply == {"got": {"proposal": "p"}}
    assert len(recipient.seen) == 1


async def test_every_attempt_lost_ends_in_a_timeout(mesh: Any) -> None:
    _, asker, recipient = mesh
    await recipient.actor.start()
    recipient.silent_for = 100

    with pytest.raises(RequestTimeout):
        await asker.request(
            recipient.actor.did, behaviours.RESULT_FETCH, {"contract_id": "c1"}, timeout=2.0
        )

    assert len(recipient.seen) == FAST_RETRY.attempts


async def test_an_answer_that_refuses_is_not_retried(mesh: Any) -> None:
    _, asker, recipient = mesh
    await recipient.actor.start()
    recipient.refuse = True

    with pytest.raises(RemoteError) as refused:
        await asker.request(
            recipient.actor.did, behaviours.RESULT_FETCH, {"contract_id": "c1"}, timeout=2.0
        )

    assert refused.value.code == "unknown_allocation"
    assert len(recipient.seen) == 1


async def test_requests_not_known_idempotent_are_sent_once(mesh: Any) -> None:
    _, asker, recipient = mesh

    with pytest.raises(TransportError) as failed:
        await asker.request(recipient.actor.did, behaviours.DISCOVER, {}, timeout=2.0)

    assert failed.value.code == "no_responders"
    await recipient.actor.start()
    recipient.silent_for = 1
    with pytest.raises(RequestTimeout):
        await asker.request(recipient.actor.did, behaviours.DISCOVER, {}, timeout=0.2)
    assert len(recipient.seen) == 1


@pytest.mark.parametrize("behavior", [behaviours.CHECKPOINT_FETCH, behaviours.PING])
async def test_reads_lost_on_the_bus_are_retried(behavior: str) -> None:
    hub = LossyHub(behavior, count=2)
    asker = Actor(identity=Identity.generate(), transport=MemoryTransport(hub), retry=FAST_RETRY)
    recipient = Recipient(hub)
    await asker.start()
    await recipient.actor.start()
    try:
        reply = await asker.request(recipient.actor.did, behavior, {"x": 1}, timeout=3.0)
    finally:
        await asker.stop()
        await recipient.actor.stop()

    assert reply == {"got": {"x": 1}}
    assert hub.dropped == 2 and len(recipient.seen) == 1


async def test_a_round_trip_measurement_is_sent_once() -> None:
    hub = LossyHub(behaviours.PING, count=1)
    asker = Actor(identity=Identity.generate(), transport=MemoryTransport(hub), retry=FAST_RETRY)
    recipient = Recipient(hub)
    await asker.start()
    await recipient.actor.start()
    try:
        with pytest.raises(RequestTimeout):
            await asker.request(
                recipient.actor.did, behaviours.PING, {"x": 1}, timeout=0.3, once=True
            )
    finally:
        await asker.stop()
        await recipient.actor.stop()

    assert hub.dropped == 1 and recipient.seen == []


def test_a_retry_policy_needs_an_attempt() -> None:
    with pytest.raises(ValueError):
        RequestRetry(attempts=0)
