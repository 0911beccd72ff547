"""The message-bus contract every transport implements, and the subject rules they share.

A transport moves opaque bytes between subjects. It knows nothing of envelopes, DIDs or
signatures, and it trusts nothing the bus hands it: subjects and payloads that arrive are
passed on as they are, for the layers above to verify.

Subjects are ``.``-separated, non-empty tokens without whitespace or control characters.
Subscriptions may use the NATS wildcards: ``*`` matches exactly one token, ``>`` (only as
the last token) matches one or more remaining tokens. Publishing to a wildcard is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from computemesh.models.errors import TransportError

SINGLE_WILDCARD = "*"
TAIL_WILDCARD = ">"
INBOX_PREFIX = "_INBOX."


@dataclass(frozen=True)
class Message:
    """One message as delivered to a handler: its subject, payload and reply subject.

    ``reply`` is set when the sender expects an answer (see ``Transport.respond``).
    """

    subject: str
    data: bytes
    reply: str | None = None


MessageHandler = Callable[[Message], Awaitable[None]]


class Subscription(Protocol):
    """Interest in a subject, as returned by ``Transport.subscribe``."""

    async def unsubscribe(self) -> None:
        """Stop delivery to this subscription's handler.

        Idempotent and never raises, also after the transport closed. Messages not yet
        handed to the handler are discarded; a handler call already running is left to
        finish, so this may be awaited from inside the handler itself.
        """
        ...


@runtime_checkable
class Transport(Protocol):
    """A connection to the message bus.

    Delivery contract shared by all implementations:

    * Delivery is asynchronous: ``publish`` returns before any handler runs.
    * Each subscription has its own queue. Its handler is awaited for one message at a time,
      in arrival order; messages from one publisher to one subscription arrive in publish
      order. Different subscriptions never wait for each other, so a slow handler delays
      only its own subscription. A handler that does slow work must spawn a task for it.
    * An exception raised by a handler is logged and the next message is still delivered.
    * A subscription is in force on the bus when ``subscribe`` returns, unless the
      transport is disconnected at the time: then it is once the connection is back.
      ``flush`` returns once everything sent before it has reached the bus.
    * Once ``close`` has been called, ``publish``, ``subscribe`` and ``request`` raise
      ``TransportError(code="closed")``.
    """

    @property
    def max_payload(self) -> int:
        """The largest payload, in bytes, the bus accepts in one message."""
        ...

    async def publish(self, subject: str, data: bytes) -> None:
        """Send ``data`` to every subscription matching ``subject`` (at most once each).

        Raises ``ValueError`` for an invalid or wildcard subject and
        ``TransportError(code="payload_too_large")`` when ``data`` exceeds ``max_payload``.
        """
        ...

    async def subscribe(
        self, subject: str, handler: MessageHandler, *, queue: str | None = None
    ) -> Subscription:
        """Await ``handler`` for each message on ``subject`` (wildcards allowed).

        With ``queue``, subscriptions sharing the same subject and queue name form a group
        and each message goes to only one member of the group. Raises ``ValueError`` for
        an invalid subject or queue name.
        """
        ...

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        """Publish ``data`` with a unique reply subject and return the first reply's payload.

        Raises ``RequestTimeout`` when no reply comes within ``timeout`` seconds,
        ``TransportError(code="no_responders")`` when nothing subscribes to ``subject``,
        ``TransportError(code="payload_too_large")`` as ``publish`` does, and
        ``ValueError`` for an invalid subject or a timeout that is not positive.
        """
        ...

    async def respond(self, message: Message, data: bytes) -> None:
        """Publish ``data`` to ``message.reply``.

        Raises ``TransportError(code="no_reply_subject")`` when ``message.reply`` is None,
        ``TransportError(code="bad_reply_subject")`` when it is not a valid subject, and
        whatever ``publish`` raises.
        """
        ...

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything sent so far has reached the bus.

        Raises ``RequestTimeout`` when that takes longer than ``timeout`` seconds.
        """
        ...

    async def close(self) -> None:
        """Stop receiving, let queued messages reach their handlers, then disconnect.

        Idempotent. Draining is bounded; handlers still running afterwards are cancelled.
        A request still waiting ends with ``TransportError`` or ``RequestTimeout``.
        """
        ...


def validate_subject(subject: str, *, wildcards: bool = False) -> str:
    """Return ``subject`` unchanged if it is a valid subject, else raise ``ValueError``.

    A valid subject is one or more non-empty tokens separated by ``.``, with no whitespace
    or control characters. With ``wildcards=True`` (subscriptions) a token may be ``*``,
    and the last token may be ``>``; ``*`` and ``>`` are never allowed inside a token.
    """
    if not isinstance(subject, str) or not subject:
        raise ValueError("a subject must be a non-empty string")
    _check_characters(subject, "subject")
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        _check_token(subject, token, last=index == len(tokens) - 1, wildcards=wildcards)
    return subject


def validate_queue(queue: str) -> str:
    """Return ``queue`` unchanged if it is a valid queue group name, else raise ``ValueError``."""
    if not isinstance(queue, str) or not queue:
        raise ValueError("a queue group name must be a non-empty string")
    _check_characters(queue, "queue group name")
    return queue


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether the literal ``subject`` is matched by the subscription ``pattern``.

    ``*`` matches exactly one token; a final ``>`` matches one or more tokens.
    """
    return tokens_match(tuple(pattern.split(".")), tuple(subject.split(".")))


def tokens_match(pattern: tuple[str, ...], subject: tuple[str, ...]) -> bool:
    """``subject_matches`` for subjects already split into tokens."""
    for index, token in enumerate(pattern):
        if token == TAIL_WILDCARD:
            return len(subject) > index
        if index >= len(subject):
            return False
        if token != SINGLE_WILDCARD and token != subject[index]:
            return False
    return len(pattern) == len(subject)


def _check_characters(value: str, what: str) -> None:
    for char in value:
        if char.isspace() or not char.isprintable():
            raise ValueError(f"{what} {value!r} contains whitespace or a control character")


def _check_token(subject: str, token: str, *, last: bool, wildcards: bool) -> None:
    if not token:
        raise ValueError(f"subject {subject!r} has an empty token")
    if token in (SINGLE_WILDCARD, TAIL_WILDCARD):
        if not wildcards:
            raise ValueError(f"subject {subject!r} contains a wildcard")
        if token == TAIL_WILDCARD and not last:
            raise ValueError(f"subject {subject!r} has '>' before its last token")
        return
    if SINGLE_WILDCARD in token or TAIL_WILDCARD in token:
        raise ValueError(f"subject {subject!r}: '*' and '>' must stand alone as a token")


def reply_subject(message: Message) -> str:
    """The subject to answer ``message`` on; raises ``TransportError`` when there is none."""
    if message.reply is None:
        raise TransportError(
            f"the message on {message.subject} expects no reply",
            code="no_reply_subject",
            retryable=False,
        )
    try:
        return validate_subject(message.reply)
    except ValueError as exc:
        raise TransportError(
            f"the message on {message.subject} has an invalid reply subject",
            code="bad_reply_subject",
            retryable=False,
        ) from exc


def check_payload_size(size: int, max_payload: int) -> None:
    """Raise ``TransportError(code="payload_too_large")`` if ``size`` exceeds ``max_payload``."""
    if size > max_payload:
        raise TransportError(
            f"payload of {size} bytes exceeds the bus limit of {max_payload} bytes",
            code="payload_too_large",
            retryable=False,
        )


def closed_error() -> TransportError:
    """The error every operation on a closed transport raises."""
    return TransportError("the transport is closed", code="closed", retryable=False)
