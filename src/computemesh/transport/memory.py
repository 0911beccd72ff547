"""An in-process message bus with the delivery behaviour of NATS, for tests and demos.

All transports attached to one ``MemoryHub`` see each other's messages. The hub belongs to
the event loop that uses it and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from computemesh.models.errors import RequestTimeout, TransportError
from computemesh.transport.base import (
    INBOX_PREFIX,
    Message,
    MessageHandler,
    Subscription,
    check_payload_size,
    closed_error,
    reply_subject,
    tokens_match,
    validate_queue,
    validate_subject,
)
from computemesh.transport.dispatch import finish_tasks, pump

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 8 * 1024 * 1024
DEFAULT_PENDING_LIMIT = 65536
"""Messages queued for one subscription before further ones are dropped (slow consumer)."""


@dataclass(eq=False)
class _MemorySubscription:
    """One subscription on a hub, with its own queue of messages awaiting its handler."""

    owner: MemoryTransport
    subject: str
    queue_group: str | None
    handler: MessageHandler
    pattern: tuple[str, ...] = field(init=False)
    pending: asyncio.Queue[Message | None] = field(default_factory=asyncio.Queue)
    active: bool = True

    def __post_init__(self) -> None:
        self.pattern = tuple(self.subject.split("."))

    def offer(self, message: Message) -> None:
        """Queue ``message`` for the handler, or drop it when the queue is full."""
        if self.pending.qsize() >= self.owner.pending_limit:
            log.warning("slow consumer on %s: dropped a message", self.subject)
            return
        self.pending.put_nowait(message)

    def end(self) -> None:
        """Mark the end of the queue: the worker stops once it gets here."""
        self.pending.put_nowait(None)

    async def messages(self) -> AsyncIterator[Message]:
        """The queued messages, in order, up to the end mark."""
        while (message := await self.pending.get()) is not None:
            yield message

    async def unsubscribe(self) -> None:
        """Stop delivery; queued messages are discarded. Idempotent, never raises."""
        if not self.active:
            return
        self.active = False
        self.owner.hub.detach(self)
        self.end()


class MemoryHub:
    """The shared bus: routes each published message to every matching subscription.

    A message goes to every plain subscription that matches it and to one member, chosen
    round-robin, of each matching queue group (same subject pattern and queue name).
    """

    def __init__(self) -> None:
        self._subscriptions: list[_MemorySubscription] = []
        self._turns: dict[tuple[str, str], int] = {}

    def attach(self, subscription: _MemorySubscription) -> None:
        self._subscriptions.append(subscription)

    def detach(self, subscription: _MemorySubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def has_interest(self, subject: str) -> bool:
        """Whether any subscription would receive a message on ``subject``."""
        tokens = tuple(subject.split("."))
        return any(tokens_match(sub.pattern, tokens) for sub in self._subscriptions)

    def route(self, message: Message) -> int:
        """Queue ``message`` for its recipients; return how many there were."""
        tokens = tuple(message.subject.split("."))
        matching = [sub for sub in self._subscriptions if tokens_match(sub.pattern, tokens)]
        recipients = [sub for sub in matching if sub.queue_group is None]
        recipients.extend(self._pick_group_members(matching))
        for subscription in recipients:
            subscription.offer(message)
        return len(recipients)

    def _pick_group_members(self, matching: list[_MemorySubscription]) -> list[_MemorySubscription]:
        groups: dict[tuple[str, str], list[_MemorySubscription]] = {}
        for sub in matching:
            if sub.queue_group is not None:
                groups.setdefault((sub.subject, sub.queue_group), []).append(sub)
        chosen = []
        for key, members in groups.items():
            turn = self._turns.get(key, 0)
            chosen.append(members[turn % len(members)])
            self._turns[key] = turn + 1
        return chosen


class MemoryTransport:
    """A ``Transport`` on a ``MemoryHub``; see ``computemesh.transport.base.Transport``."""

    def __init__(
        self,
        hub: MemoryHub,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        drain_timeout: float = 5.0,
        pending_limit: int = DEFAULT_PENDING_LIMIT,
    ) -> None:
        if max_payload <= 0:
            raise ValueError("max_payload must be positive")
        self.hub = hub
        self.pending_limit = pending_limit
        self._max_payload = max_payload
        self._drain_timeout = drain_timeout
        self._subscriptions: set[_MemorySubscription] = set()
        self._workers: set[asyncio.Task[None]] = set()
        self._requests: set[asyncio.Future[bytes]] = set()
        self._closing = False
        self._closed = asyncio.Event()

    @property
    def max_payload(self) -> int:
        """The payload limit this transport was created with."""
        return self._max_payload

    async def publish(self, subject: str, data: bytes) -> None:
        """See ``Transport.publish``. Allowed while ``close`` drains, so handlers can reply."""
        if self._closed.is_set():
            raise closed_error()
        self._check_payload(data)
        self.hub.route(Message(validate_subject(subject), bytes(data)))

    async def subscribe(
        self, subject: str, handler: MessageHandler, *, queue: str | None = None
    ) -> Subscription:
        """See ``Transport.subscribe``. The subscription is in force when this returns."""
        self._check_open()
        validate_subject(subject, wildcards=True)
        if queue is not None:
            validate_queue(queue)
        subscription = _MemorySubscription(self, subject, queue, handler)
        self.hub.attach(subscription)
        self._subscriptions.add(subscription)
        worker = asyncio.create_task(self._work(subscription), name=f"memory-sub:{subject}")
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)
        return subscription

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        """See ``Transport.request``. Replies arrive on a fresh ``_INBOX.<hex>`` subject."""
        self._check_open()
        validate_subject(subject)
        self._check_payload(data)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if not self.hub.has_interest(subject):
            raise TransportError(f"no responders on {subject}", code="no_responders")
        inbox = INBOX_PREFIX + secrets.token_hex(16)
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        subscription = await self.subscribe(inbox, _resolver(reply))
        self._requests.add(reply)
        try:
            self.hub.route(Message(subject, bytes(data), reply=inbox))
            return await asyncio.wait_for(reply, timeout)
        except TimeoutError as exc:
            raise RequestTimeout(f"no reply on {subject} within {timeout}s") from exc
        finally:
            self._requests.discard(reply)
            await subscription.unsubscribe()

    async def respond(self, message: Message, data: bytes) -> None:
        """See ``Transport.respond``."""
        await self.publish(reply_subject(message), data)

    async def flush(self, timeout: float = 5.0) -> None:
        """See ``Transport.flush``. Publishing is immediate here, so this only checks state."""
        if self._closed.is_set():
            raise closed_error()

    async def close(self) -> None:
        """See ``Transport.close``. Later calls wait for the first one to finish."""
        if self._closing:
            if asyncio.current_task() not in self._workers:
                await self._closed.wait()
            return
        self._closing = True
        try:
            self._fail_requests()
            for subscription in list(self._subscriptions):
                self.hub.detach(subscription)
                subscription.end()
            await finish_tasks(list(self._workers), self._drain_timeout)
        finally:
            self._subscriptions.clear()
            self._closed.set()

    async def _work(self, subscription: _MemorySubscription) -> None:
        try:
            await pump(subscription.messages(), subscription.handler, lambda: subscription.active)
        finally:
            subscription.active = False
            self.hub.detach(subscription)
            self._subscriptions.discard(subscription)

    def _fail_requests(self) -> None:
        for reply in self._requests:
            if not reply.done():
                reply.set_exception(TransportError("the transport was closed", code="closed"))

    def _check_open(self) -> None:
        if self._closing:
            raise closed_error()

    def _check_payload(self, data: bytes) -> None:
        check_payload_size(len(data), self._max_payload)


def _resolver(reply: asyncio.Future[bytes]) -> MessageHandler:
    async def resolve(message: Message) -> None:
        if not reply.done():
            reply.set_result(message.data)

    return resolve
