"""Running subscription handlers: one worker task per subscription, shared by transports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from computemesh.transport.base import Message, MessageHandler

log = logging.getLogger(__name__)


async def deliver(handler: MessageHandler, message: Message) -> None:
    """Await ``handler(message)``; log and swallow any ``Exception`` it raises.

    Cancellation is not swallowed.
    """
    try:
        await handler(message)
    except Exception:
        log.exception("handler for a message on %s failed", message.subject)


async def pump(
    messages: AsyncIterator[Message], handler: MessageHandler, active: Callable[[], bool]
) -> None:
    """Hand each message from ``messages`` to ``handler``, one at a time and in order.

    Stops when ``messages`` ends or, before handing over the next message, when
    ``active()`` is false. A failing handler never stops the loop.
    """
    async for message in messages:
        if not active():
            return
        await deliver(handler, message)


async def finish_tasks(tasks: Iterable[asyncio.Task[None]], grace_s: float) -> None:
    """Wait up to ``grace_s`` seconds for ``tasks`` to end, then cancel and await the rest.

    The calling task is skipped, so a handler may close its own transport. Never raises
    for what the tasks raised.
    """
    current = asyncio.current_task()
    pending = {task for task in tasks if task is not current and not task.done()}
    if not pending:
        return
    _, late = await asyncio.wait(pending, timeout=max(grace_s, 0.0))
    for task in late:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
