"""The actor runtime: verification before handlers, error replies, supervision."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from computemesh.actor import Actor, Inbound, RestartPolicy, Supervisor, behaviours, subject_for
from computemesh.identity import Identity, seal
from computemesh.identity.canonical import canonical_json
from computemesh.models.errors import EnvelopeRejected, MeshError, RemoteError
from computemesh.transport import MemoryHub, MemoryTransport, Message

BEHAVIOUR = behaviours.RESULT_FETCH


@pytest.fixture
async def pair() -> AsyncIterator[tuple[MemoryHub, Actor, Actor, list[Inbound]]]:
    hub = MemoryHub()
    server = Actor(identity=Identity.generate(), transport=MemoryTransport(hub))
    client = Actor(identity=Identity.generate(), transport=MemoryTransport(hub))
    seen: list[Inbound] = []

    async def echo(inbound: Inbound) -> dict[str, Any]:
        seen.append(inbound)
        if inbound.payload.get("fail"):
            raise MeshError("asked to fail", code="asked_to_fail")
        if inbound.payload.get("crash"):
            raise RuntimeError("boom")
        return {"echo": inbound.payload, "sender": inbound.sender}

    server.register(BEHAVIOUR, echo)
    await server.start()
    await client.start()
    yield hub, server, client, seen
    await client.stop()
    await server.stop()


async def test_request_reply_carries_verified_sender(pair: Any) -> None:
    _, server, client, _ = pair
    reply = await client.request(server.did, BEHAVIOUR, {"x": 1}, timeout=2)
    assert reply == {"echo": {"x": 1}, "sender": client.did}


async def test_handler_errors_come_back_as_data_and_actor_keeps_serving(pair: Any) -> None:
    _, server, client, _ = pair
    with pytest.raises(RemoteError) as failed:
        await client.request(server.did, BEHAVIOUR, {"fail": True}, timeout=2)
    assert failed.value.code == "asked_to_fail"
    with pytest.raises(RemoteError) as crashed:
        await client.request(server.did, BEHAVIOUR, {"crash": True}, timeout=2)
    assert crashed.value.code == "internal_error"
    assert await client.request(server.did, BEHAVIOUR, {"ok": 1}, timeout=2)


async def test_unknown_behaviour_is_refused(pair: Any) -> None:
    _, server, client, _ = pair
    with pytest.raises(RemoteError) as caught:
        await client.request(server.did, behaviours.COMMIT, {}, timeout=2)
    assert caught.value.code == "unknown_behavior"


def test_only_listed_behaviours_can_be_registered() -> None:
    actor = Actor(identity=Identity.generate(), transport=MemoryTransport(MemoryHub()))
    with pytest.raises(ValueError, match="not a behaviour listed"):
        actor.register("/mesh/made/up", lambda inbound: asyncio.sleep(0))  # type: ignore[arg-type,return-value]


async def raw_request(hub: MemoryHub, did: str, data: bytes) -> bytes:
    return await MemoryTransport(hub).request(subject_for(did), data, timeout=2)


def forged(identity: Identity, recipient: str) -> bytes:
    wire = json.loads(seal(identity, recipient=recipient, behavior=BEHAVIOUR, payload={"a": 1}))
    wire["payload"] = {"a": 2}
    return canonical_json(wire)


async def test_forged_message_rejected_with_error_reply(pair: Any) -> None:
    hub, server, client, seen = pair
    reply = json.loads(await raw_request(hub, server.did, forged(client.identity, server.did)))
    assert reply["beh"] == behaviours.ERROR
    assert reply["payload"]["code"] == "bad_signature"
    assert seen == []
    assert server.rejections == {"bad_signature": 1}
    assert await client.request(server.did, BEHAVIOUR, {"still": "serving"}, timeout=2)


async def test_replayed_message_runs_once(pair: Any) -> None:
    hub, server, client, seen = pair
    data = seal(client.identity, recipient=server.did, behavior=BEHAVIOUR, payload={"n": 1})
    first = json.loads(await raw_request(hub, server.did, data))
    second = json.loads(await raw_request(hub, server.did, data))
    assert first["beh"] == BEHAVIOUR + "/reply"
    assert second["payload"]["code"] == "replayed"
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda c, s: b"x" * (1024 * 1024 + 1), "oversized"),
        (lambda c, s: b"not json", "malformed"),
        (
            lambda c, s: seal(c, recipient=s, behavior=BEHAVIOUR, payload={}, now_ms=1000),
            "expired",
        ),
        (
            lambda c, s: seal(c, recipient=Identity.generate().did, behavior=BEHAVIOUR, payload={}),
            "recipient_mismatch",
        ),
    ],
)
async def test_bad_messages_are_rejected_and_counted(pair: Any, make: Any, code: str) -> None:
    hub, server, client, seen = pair
    await MemoryTransport(hub).publish(subject_for(server.did), make(client.identity, server.did))
    for _ in range(100):
        if server.rejections:
            break
        await asyncio.sleep(0.01)
    assert server.rejections == {code: 1}
    assert seen == []
    assert await client.request(server.did, BEHAVIOUR, {}, timeout=2)


async def test_reply_from_an_impostor_is_rejected(pair: Any) -> None:
    hub, _, client, _ = pair
    impostor = Identity.generate()
    victim = Identity.generate().did
    transport = MemoryTransport(hub)

    async def answer(message: Message) -> None:
        data = seal(impostor, recipient=client.did, behavior=BEHAVIOUR + "/reply", payload={})
        await transport.respond(message, data)

    await transport.subscribe(subject_for(victim), answer)
    with pytest.raises(EnvelopeRejected) as caught:
        await client.request(victim, BEHAVIOUR, {}, timeout=2)
    assert caught.value.code == "sender_mismatch"


async def test_supervisor_restarts_a_crashed_child() -> None:
    runs: list[int] = []
    serving = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("crash")
        serving.set()
        await asyncio.Event().wait()

    supervisor = Supervisor(policy=RestartPolicy(backoff_s=0.01))
    supervisor.spawn("flaky", flaky)
    await asyncio.wait_for(serving.wait(), timeout=2)
    assert supervisor.restarts["flaky"] == 2
    assert supervisor.failed == set()
    await supervisor.stop()


async def test_supervisor_gives_up_after_budget() -> None:
    async def always_crash() -> None:
        raise RuntimeError("crash")

    supervisor = Supervisor(policy=RestartPolicy(max_restarts=2, backoff_s=0.001))
    supervisor.spawn("doomed", always_crash)
    await asyncio.wait_for(supervisor.wait(), timeout=2)
    assert supervisor.failed == {"doomed"}
    assert supervisor.restarts["doomed"] == 2
