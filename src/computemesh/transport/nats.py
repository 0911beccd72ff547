"""A ``Transport`` over a NATS server or cluster, using nats-py.

The client holds every server URL it was given (plus those the cluster announces) and
reconnects by itself, forever by default, to whichever server answers after the one it used
goes away; subscriptions are renewed on the new connection, and publishes made while
disconnected are buffered up to a limit. Every nats-py error is raised as
``TransportError`` or ``RequestTimeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription as NatsSubscription

from computemesh.models.errors import RequestTimeout, TransportError
from computemesh.transport.base import (
    Message,
    MessageHandler,
    Subscription,
    check_payload_size,
    closed_error,
    reply_subject,
    validate_queue,
    validate_subject,
)
from computemesh.transport.dispatch import finish_tasks, pump

log = logging.getLogger(__name__)

SUBSCRIBE_CONFIRM_S = 2.0
"""How long ``subscribe`` waits for the server to confirm a new subscription."""
CONNECT_HINT = "check the URL and that nats-server runs there (a local mesh starts with `cmesh up`)"


class _NatsSubscriptionHandle:
    """Our side of one nats-py subscription; its handler runs in a worker task."""

    def __init__(self, subscription: NatsSubscription) -> None:
        self._subscription = subscription
        self.active = True

    async def messages(self) -> AsyncIterator[Message]:
        """Messages from the server, as they are; ends when the subscription ends."""
        async for msg in self._subscription.messages:
            yield Message(subject=msg.subject, data=msg.data, reply=msg.reply or None)

    async def unsubscribe(self) -> None:
        """Stop delivery; queued messages are discarded. Idempotent, never raises."""
        if not self.active:
            return
        self.active = False
        try:
            await self._subscription.unsubscribe()
        except nats_errors.Error as exc:
            log.debug("unsubscribe from %s: %s", self._subscription.subject, exc)


class NatsTransport:
    """A ``Transport`` on a NATS connection; see ``computemesh.transport.base.Transport``.

    Create it with ``await NatsTransport.connect(url)``.
    """

    def __init__(self, client: Client, *, drain_timeout: float) -> None:
        self._nc = client
        self._drain_timeout = drain_timeout
        self._workers: set[asyncio.Task[None]] = set()
        self._connected = False
        self._closing = False
        self._closed = asyncio.Event()

    @classmethod
    async def connect(
        cls,
        url: str | list[str],
        *,
        name: str = "computemesh",
        connect_timeout: float = 5.0,
        max_reconnect_attempts: int = -1,
        reconnect_time_wait: float = 2.0,
        drain_timeout: float = 5.0,
    ) -> NatsTransport:
        """Connect to the first reachable server of ``url`` and return the transport.

        ``url`` is one URL, a comma-separated list of them (as ``--nats`` takes it), or a
        list. ``max_reconnect_attempts=-1`` reconnects forever after a lost connection.
        Raises ``TransportError(code="connect_failed")`` when every server refused or
        ``connect_timeout`` seconds passed without a connection.
        """
        servers = server_urls(url)
        transport = cls(Client(), drain_timeout=drain_timeout)
        options: dict[str, Any] = {
            "servers": servers,
            "name": name,
            "connect_timeout": connect_timeout,
            "max_reconnect_attempts": max_reconnect_attempts,
            "reconnect_time_wait": reconnect_time_wait,
            "drain_timeout": drain_timeout,
        }
        await transport._open(options, connect_timeout)
        return transport

    async def _open(self, options: dict[str, Any], limit_s: float) -> None:
        servers: list[str] = options["servers"]
        failures: list[Exception] = []
        all_failed = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            if self._connected:
                await self._on_error(exc)
                return
            failures.append(exc)
            if len(failures) >= len(servers):
                all_failed.set()

        callbacks: dict[str, Any] = {
            "error_cb": on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
        }
        connecting = asyncio.create_task(self._nc.connect(**options, **callbacks))
        failed = asyncio.create_task(all_failed.wait())
        try:
            await asyncio.wait(
                {connecting, failed}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            await self._abandon(connecting)
            raise
        finally:
            failed.cancel()
        if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
            self._connected = True
            log.info("connected to NATS at %s", self._server_name())
            return
        cause = _failure_cause(connecting, failures)
        await self._abandon(connecting)
        raise _connect_failed(servers, limit_s, cause) from cause

    async def _abandon(self, connecting: asyncio.Task[None]) -> None:
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await connecting
        with contextlib.suppress(Exception):
            await self._nc.close()

    @property
    def connected_server(self) -> str | None:
        """``host:port`` of the server this client is connected to now; None while it is not."""
        return self._server_name() if self._nc.is_connected else None

    @property
    def max_payload(self) -> int:
        """The server's ``max_payload`` from its INFO (renewed on every reconnect)."""
        return int(self._nc.max_payload)

    async def publish(self, subject: str, data: bytes) -> None:
        """See ``Transport.publish``. While reconnecting, publishes are buffered (bounded)."""
        validate_subject(subject)
        await self._publish(subject, data)

    async def subscribe(
        self, subject: str, handler: MessageHandler, *, queue: str | None = None
    ) -> Subscription:
        """See ``Transport.subscribe``; confirmed with the server before returning."""
        self._check_open()
        validate_subject(subject, wildcards=True)
        if queue is not None:
            validate_queue(queue)
        with _translated(f"subscribe to {subject}"):
            subscription = await self._nc.subscribe(subject, queue=queue or "")
        handle = _NatsSubscriptionHandle(subscription)
        worker = asyncio.create_task(self._work(handle, handler), name=f"nats-sub:{subject}")
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)
        await self._confirm(subject)
        return handle

    async def _confirm(self, subject: str) -> None:
        """Wait (bounded) until the server has the subscription, when connected.

        Not getting the confirmation is no error: nats-py keeps the subscription and
        renews it on every (re)connection.
        """
        if not self._nc.is_connected:
            return
        try:
            await self.flush(SUBSCRIBE_CONFIRM_S)
        except TransportError as exc:
            log.debug("subscription to %s not confirmed yet: %s", subject, exc)

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        """See ``Transport.request``."""
        self._check_open()
        validate_subject(subject)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        check_payload_size(len(data), self.max_payload)
        with _translated(f"request on {subject}", timeout=timeout):
            reply = await self._nc.request(subject, data, timeout=timeout)
        return bytes(reply.data)

    async def respond(self, message: Message, data: bytes) -> None:
        """See ``Transport.respond``."""
        await self._publish(reply_subject(message), data)

    async def flush(self, timeout: float = 5.0) -> None:
        """See ``Transport.flush``: PING/PONG round trips with the server.

        nats-py writes its PING straight to the socket, possibly ahead of commands still
        queued for its flusher task, so one round trip does not prove those reached the
        server. A second PING, sent after the first PONG (by when the flusher has written
        what was queued before), does.
        """
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        client: Any = self._nc
        deadline = asyncio.get_running_loop().time() + timeout
        with _translated("flush", timeout=timeout):
            await client.flush(timeout)
            remaining = deadline - asyncio.get_running_loop().time()
            await client.flush(max(remaining, 0.001))

    async def close(self) -> None:
        """See ``Transport.close``: drains subscriptions and publishes, then disconnects.

        Later calls wait for the first one to finish.
        """
        if self._closing:
            if asyncio.current_task() not in self._workers:
                await self._closed.wait()
            return
        self._closing = True
        try:
            await self._drain()
            await finish_tasks(list(self._workers), self._drain_timeout)
        finally:
            self._closed.set()

    async def _drain(self) -> None:
        if self._nc.is_closed:
            return
        try:
            await self._nc.drain()
        except nats_errors.Error as exc:
            log.debug("drain failed (%s); closing the NATS connection", exc)
        if not self._nc.is_closed:
            with contextlib.suppress(nats_errors.Error):
                await self._nc.close()

    async def _publish(self, subject: str, data: bytes) -> None:
        if self._closed.is_set():
            raise closed_error()
        check_payload_size(len(data), self.max_payload)
        with _translated(f"publish on {subject}"):
            await self._nc.publish(subject, data)

    async def _work(self, handle: _NatsSubscriptionHandle, handler: MessageHandler) -> None:
        try:
            await pump(handle.messages(), handler, lambda: handle.active)
        finally:
            handle.active = False

    def _check_open(self) -> None:
        if self._closing:
            raise closed_error()

    def _server_name(self) -> str:
        url = self._nc.connected_url
        return url.netloc.rpartition("@")[2] if url is not None else "?"

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS: %s", _describe(exc))

    async def _on_disconnected(self) -> None:
        if self._connected and not self._closing:
            log.warning("disconnected from NATS at %s; reconnecting", self._server_name())

    async def _on_reconnected(self) -> None:
        log.info("reconnected to NATS at %s", self._server_name())

    async def _on_closed(self) -> None:
        if self._connected and not self._closing:
            log.error("the NATS connection closed and will not reconnect")


def server_urls(url: str | list[str]) -> list[str]:
    """The server URLs in ``url``: a list, or one string of comma-separated URLs.

    Raises ``ValueError`` when there is none.
    """
    parts = url.split(",") if isinstance(url, str) else list(url)
    servers = [part.strip() for part in parts if part.strip()]
    if not servers:
        raise ValueError("at least one NATS URL is needed")
    return servers


@contextlib.contextmanager
def _translated(action: str, *, timeout: float | None = None) -> Iterator[None]:
    """Re-raise nats-py errors from the block as ``TransportError`` / ``RequestTimeout``."""
    try:
        yield
    except nats_errors.NoRespondersError as exc:
        raise TransportError(f"{action}: no responders", code="no_responders") from exc
    except nats_errors.TimeoutError as exc:
        raise RequestTimeout(f"{action} timed out after {timeout}s") from exc
    except nats_errors.MaxPayloadError as exc:
        raise TransportError(
            f"{action}: payload exceeds the server limit", code="payload_too_large", retryable=False
        ) from exc
    except (nats_errors.ConnectionClosedError, nats_errors.ConnectionDrainingError) as exc:
        raise closed_error() from exc
    except nats_errors.OutboundBufferLimitError as exc:
        raise TransportError(
            f"{action}: disconnected from NATS and the outbound buffer is full",
            code="disconnected",
        ) from exc
    except nats_errors.Error as exc:
        raise TransportError(f"{action} failed: {_describe(exc)}") from exc


def _failure_cause(connecting: asyncio.Task[None], failures: list[Exception]) -> Exception | None:
    """Why a connect attempt failed: its own error, else the last one it reported."""
    if connecting.done() and not connecting.cancelled():
        error = connecting.exception()
        if isinstance(error, Exception):
            return error
    return failures[-1] if failures else None


def _connect_failed(servers: list[str], timeout: float, cause: Exception | None) -> TransportError:
    where = ", ".join(_redact(server) for server in servers)
    reason = _describe(cause) if cause else f"no connection within {timeout}s"
    return TransportError(
        f"cannot connect to NATS at {where} ({reason})", code="connect_failed", hint=CONNECT_HINT
    )


def _describe(exc: BaseException) -> str:
    """An error's type and message, for logs and error messages."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _redact(url: str) -> str:
    """``url`` without any user name or password in it."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
