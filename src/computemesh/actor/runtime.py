"""Actors addressed by DID: every inbound message is verified here, before any handler runs.

An ``Actor`` owns one identity and one transport subscription for its DID (plus any topics
it joins). Inbound bytes are opened by an ``EnvelopeVerifier`` (size, shape, signature,
recipient, lifetime, replay); a rejected message is logged with its reason and, when it was a
request from a parseable sender, answered with a signed error. Handlers receive an
``Inbound`` whose ``sender`` is the verified signer: handlers must trust no DID in a payload
that disagrees with it. A handler's ``MeshError`` becomes an error reply; any other
exception is logged and answered as ``internal_error``; neither stops the actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from computemesh.actor import behaviours
from computemesh.identity import Envelope, EnvelopeVerifier, Identity, ReplayCache, seal
from computemesh.identity.did import public_key_from_did
from computemesh.identity.envelope import TOPIC_PREFIX
from computemesh.models.errors import (
    EnvelopeRejected,
    IdentityError,
    MeshError,
    RemoteError,
    RequestTimeout,
    TransportError,
)
from computemesh.transport import Message, Subscription, Transport

log = logging.getLogger(__name__)

ACTOR_SUBJECT_PREFIX = "mesh.actor."
TOPIC_SUBJECT_PREFIX = "mesh.topic."
DEFAULT_MAX_IN_FLIGHT = 256

IDEMPOTENT_REQUESTS = frozenset(
    {
        behaviours.COMMIT,
        behaviours.RESULT_FETCH,
        behaviours.CANCEL,
        behaviours.CHECKPOINT_FETCH,
        behaviours.PING,
    }
)
"""Requests safe to send again: a commit names its contract id, and a provider that already
holds that contract answers with it instead of taking a second one; a result fetch and a
checkpoint fetch read; a cancel of an allocation already stopped answers with its state; a
ping only echoes."""
RETRYABLE_TRANSPORT_CODES = frozenset({"no_responders", "disconnected"})


@dataclass(frozen=True)
class RequestRetry:
    """How an idempotent request is retried while the bus loses and regains a hub.

    The caller's timeout bounds all attempts together: each attempt gets an even share of
    what is left, and a pause that doubles from ``first_pause_s`` up to ``max_pause_s``
    separates attempts. Each retry is a fresh envelope (new nonce, same payload), so the
    recipient's replay check never mistakes it for a replay.
    """

    attempts: int = 4
    first_pause_s: float = 0.1
    max_pause_s: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a request needs at least one attempt")


@dataclass(frozen=True)
class Inbound:
    """A verified message as a handler sees it."""

    envelope: Envelope

    @property
    def sender(self) -> str:
        return self.envelope.sender

    @property
    def behavior(self) -> str:
        return self.envelope.behavior

    @property
    def payload(self) -> dict[str, Any]:
        return self.envelope.payload


Handler = Callable[[Inbound], Awaitable[Mapping[str, Any] | None]]


def subject_for(recipient: str) -> str:
    """The bus subject a recipient (a DID or ``topic:NAME``) listens on."""
    if recipient.startswith(TOPIC_PREFIX):
        return TOPIC_SUBJECT_PREFIX + recipient.removeprefix(TOPIC_PREFIX)
    return ACTOR_SUBJECT_PREFIX + recipient


def topic(name: str) -> str:
    return TOPIC_PREFIX + name


class Actor:
    """One participant on the mesh: its identity, its behaviours and its mailbox."""

    def __init__(
        self,
        *,
        identity: Identity,
        transport: Transport,
        verifier: EnvelopeVerifier | None = None,
        ttl_s: float = 30.0,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        retry: RequestRetry | None = None,
    ) -> None:
        self.identity = identity
        self.transport = transport
        self.verifier = verifier or EnvelopeVerifier(replay_cache=ReplayCache())
        self.ttl_s = ttl_s
        self.retry = retry or RequestRetry()
        self.rejections: dict[str, int] = {}
        self._handlers: dict[str, Handler] = {}
        self._topics: set[str] = set()
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._closed = asyncio.Event()

    @property
    def did(self) -> str:
        return self.identity.did

    def register(self, behavior: str, handler: Handler) -> None:
        if behavior not in behaviours.ALL:
            raise ValueError(f"{behavior} is not a behaviour listed in actor.behaviours")
        self._handlers[behavior] = handler

    async def start(self) -> None:
        """Subscribe to this actor's own subject."""
        await self._subscribe(subject_for(self.did))

    async def join(self, topic_name: str) -> None:
        """Also receive broadcasts on ``topic:topic_name``."""
        recipient = topic(topic_name)
        if recipient in self._topics:
            return
        self._topics.add(recipient)
        await self._subscribe(subject_for(recipient))

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(MeshError):
                await subscription.unsubscribe()
        self._subscriptions.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # Outbound -----------------------------------------------------------------------------

    def seal(self, recipient: str, behavior: str, payload: Mapping[str, Any]) -> bytes:
        return seal(
            self.identity, recipient=recipient, behavior=behavior, payload=payload, ttl_s=self.ttl_s
        )

    async def send(self, recipient: str, behavior: str, payload: Mapping[str, Any]) -> None:
        """Fire and forget to a DID or a ``topic:NAME``."""
        await self.transport.publish(
            subject_for(recipient), self.seal(recipient, behavior, payload)
        )

    async def broadcast(self, topic_name: str, behavior: str, payload: Mapping[str, Any]) -> None:
        await self.send(topic(topic_name), behavior, payload)

    async def request(
        self,
        recipient: str,
        behavior: str,
        payload: Mapping[str, Any],
        *,
        timeout: float,
        once: bool = False,
    ) -> dict[str, Any]:
        """Ask one actor and return its verified reply payload.

        Requests in ``IDEMPOTENT_REQUESTS`` that time out or find no responder are retried
        within ``timeout`` as ``self.retry`` says; others are sent once, and so is any with
        ``once`` (a round-trip measurement, which a retry would make measure the retries).

        Raises ``RequestTimeout``/``TransportError`` from the bus, ``EnvelopeRejected`` if the
        reply does not verify as coming from ``recipient``, and ``RemoteError`` carrying the
        remote code when the recipient answered with an error.
        """
        if once or behavior not in IDEMPOTENT_REQUESTS:
            return await self._request_once(recipient, behavior, payload, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = self.retry.first_pause_s
        for attempts_left in range(self.retry.attempts, 0, -1):
            share = max(deadline - loop.time(), 0.001) / attempts_left
            try:
                return await self._request_once(recipient, behavior, payload, share)
            except TransportError as exc:
                if attempts_left == 1 or not worth_retrying(exc):
                    raise
                log.info("%s to %s: %s; retrying", behavior, recipient, exc.code)
            await asyncio.sleep(min(pause, max(deadline - loop.time(), 0.0)))
            pause = min(pause * 2, self.retry.max_pause_s)
        raise RequestTimeout(f"{behavior} to {recipient}: no attempt left")

    async def _request_once(
        self, recipient: str, behavior: str, payload: Mapping[str, Any], timeout: float
    ) -> dict[str, Any]:
        data = self.seal(recipient, behavior, payload)
        reply = await self.transport.request(subject_for(recipient), data, timeout=timeout)
        envelope = self.verifier.open(
            reply, accept_recipients={self.did}, expected_sender=recipient
        )
        if envelope.behavior == behaviours.ERROR:
            raise remote_error(envelope.payload)
        if envelope.behavior != behaviours.reply_behavior(behavior):
            raise EnvelopeRejected(
                f"reply to {behavior} carried behaviour {envelope.behavior}", code="malformed"
            )
        return envelope.payload

    # Inbound ------------------------------------------------------------------------------

    async def _subscribe(self, subject: str) -> None:
        self._subscriptions.append(await self.transport.subscribe(subject, self._on_message))

    async def _on_message(self, message: Message) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, message: Message) -> None:
        try:
            envelope = self.verifier.open(message.data, accept_recipients={self.did, *self._topics})
        except EnvelopeRejected as exc:
            self._note_rejection(exc, message)
            await self._reply_error_to_unverified(message, exc)
            return
        reply = await self._dispatch(envelope)
        if message.reply is not None:
            await self._respond(message, envelope.sender, envelope.behavior, reply)

    async def _dispatch(self, envelope: Envelope) -> Mapping[str, Any] | MeshError:
        handler = self._handlers.get(envelope.behavior)
        if handler is None:
            return MeshError(f"no behaviour {envelope.behavior} here", code="unknown_behavior")
        try:
            return await handler(Inbound(envelope)) or {}
        except MeshError as exc:
            log.info("behaviour %s from %s failed: %s", envelope.behavior, envelope.sender, exc)
            return exc
        except Exception:
            log.exception("behaviour %s from %s crashed", envelope.behavior, envelope.sender)
            return MeshError("the handler failed", code="internal_error", retryable=True)

    async def _respond(
        self,
        message: Message,
        requester: str,
        behavior: str,
        reply: Mapping[str, Any] | MeshError,
    ) -> None:
        if isinstance(reply, MeshError):
            data = self.seal(requester, behaviours.ERROR, reply.to_dict())
        else:
            data = self.seal(requester, behaviours.reply_behavior(behavior), reply)
        try:
            await self.transport.respond(message, data)
        except MeshError as exc:
            log.warning("could not reply to %s: %s", requester, exc)

    def _note_rejection(self, exc: EnvelopeRejected, message: Message) -> None:
        self.rejections[exc.code] = self.rejections.get(exc.code, 0) + 1
        log.warning(
            "rejected message on %s (%d bytes): %s: %s",
            message.subject,
            len(message.data),
            exc.code,
            exc.message,
        )

    async def _reply_error_to_unverified(self, message: Message, exc: EnvelopeRejected) -> None:
        if message.reply is None:
            return
        sender = claimed_sender(message.data, self.verifier.max_bytes)
        if sender is None:
            return
        data = self.seal(sender, behaviours.ERROR, exc.to_dict())
        with contextlib.suppress(MeshError):
            await self.transport.respond(message, data)


def claimed_sender(data: bytes, max_bytes: int) -> str | None:
    """The ``from`` DID an unverified message claims, if it parses; None otherwise."""
    if len(data) > max_bytes:
        return None
    try:
        sender = json.loads(data).get("from")
        if isinstance(sender, str):
            public_key_from_did(sender)
            return sender
    except (ValueError, AttributeError, IdentityError):
        pass
    return None


def worth_retrying(exc: TransportError) -> bool:
    """A lost reply or a recipient not (yet) reachable: what a hub failover looks like."""
    return isinstance(exc, RequestTimeout) or exc.code in RETRYABLE_TRANSPORT_CODES


def remote_error(payload: Mapping[str, Any]) -> RemoteError:
    code = str(payload.get("code", "remote_error"))[:64]
    message = str(payload.get("message", "the remote actor refused"))[:2048]
    hint = payload.get("hint")
    return RemoteError(
        message,
        code=code,
        hint=str(hint)[:512] if hint else None,
        retryable=bool(payload.get("retryable", False)),
    )
