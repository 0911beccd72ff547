"""A supervisor that restarts crashed children, one-for-one, with a restart budget.

A child is a name and a factory returning a coroutine (usually an actor's ``run``). When the
coroutine raises, the supervisor logs it and starts a fresh one after ``backoff_s`` (doubling
up to ``max_backoff_s``). A child that crashes more than ``max_restarts`` times within
``window_s`` is given up on and reported in ``failed``. A child whose coroutine returns
normally is finished and not restarted. ``stop()`` cancels every child and waits for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

ChildFactory = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5
    window_s: float = 60.0
    backoff_s: float = 0.1
    max_backoff_s: float = 5.0


@dataclass
class _Child:
    name: str
    factory: ChildFactory
    crashes: list[float] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(self, *, policy: RestartPolicy | None = None) -> None:
        self.policy = policy or RestartPolicy()
        self.restarts: dict[str, int] = {}
        self.failed: set[str] = set()
        self._children: dict[str, _Child] = {}

    def spawn(self, name: str, factory: ChildFactory) -> None:
        if name in self._children:
            raise ValueError(f"a child named {name!r} already runs")
        child = _Child(name=name, factory=factory)
        self._children[name] = child
        self.restarts[name] = 0
        child.task = asyncio.create_task(self._keep_running(child), name=f"supervised:{name}")

    async def _keep_running(self, child: _Child) -> None:
        backoff = self.policy.backoff_s
        while True:
            try:
                await child.factory()
                log.info("child %s finished", child.name)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("child %s crashed", child.name)
            if self._over_budget(child):
                log.error("child %s crashed too often; giving up", child.name)
                self.failed.add(child.name)
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.policy.max_backoff_s)
            self.restarts[child.name] += 1
            log.info("restarting child %s (restart %d)", child.name, self.restarts[child.name])

    def _over_budget(self, child: _Child) -> bool:
        now = time.monotonic()
        child.crashes = [t for t in child.crashes if now - t < self.policy.window_s]
        child.crashes.append(now)
        return len(child.crashes) > self.policy.max_restarts

    async def wait(self) -> None:
        """Until every child has finished or been given up on."""
        tasks = [child.task for child in self._children.values() if child.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        tasks = [child.task for child in self._children.values() if child.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
