"""Composition root of the consumer side: identity, bus, store and orchestrator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from computemesh.actor import Actor
from computemesh.app.home import MeshHome
from computemesh.identity import load_or_create_identity
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.store import JobRepository, open_database, sqlite_url
from computemesh.transport import NatsTransport


def open_jobs(home: MeshHome) -> JobRepository:
    home.ensure()
    return JobRepository(open_database(sqlite_url(home.consumer_db)))


@asynccontextmanager
async def consumer_session(
    home: MeshHome,
    nats_url: str,
    *,
    settings: OrchestratorSettings | None = None,
) -> AsyncIterator[Orchestrator]:
    """A started orchestrator on the mesh at ``nats_url``; stopped and disconnected on exit."""
    jobs = open_jobs(home)
    identity = load_or_create_identity(home.root)
    transport = await NatsTransport.connect(nats_url, name="cmesh-consumer")
    orchestrator = Orchestrator(
        actor=Actor(identity=identity, transport=transport), jobs=jobs, settings=settings
    )
    try:
        await orchestrator.start()
        yield orchestrator
    finally:
        await orchestrator.stop()
        await transport.close()
