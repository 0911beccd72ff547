"""Composition root of the consumer side: identity, bus, store, ledger and orchestrator."""

from __future__ import annotations

import fcntl
import math
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace

from computemesh.actor import Actor
from computemesh.app.home import MeshHome
from computemesh.app.ledger import consumer_ledger
from computemesh.identity import load_or_create_identity
from computemesh.models.errors import MeshError
from computemesh.models.job import REGION_PATTERN
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.liveness import LivenessBounds
from computemesh.orchestrator.verify_flow import VerificationSettings, consumer_verification
from computemesh.settlement import Ledger
from computemesh.store import JobRepository, open_database, sqlite_url
from computemesh.transport import NatsTransport

RECOVERY_LOCK = "consumer.lock"
ENV_REGION = "CMESH_REGION"
ENV_SUSPECT_AFTER = "CMESH_SUSPECT_AFTER_S"
ENV_DEAD_AFTER = "CMESH_DEAD_AFTER_S"
MIN_SUSPECT_AFTER_S = 1.0
"""Nodes beat once a second: a shorter silence is no sign of trouble."""
MAX_DEAD_AFTER_S = LivenessBounds.max_outage_s
LIVENESS_HINT = (
    f"a node is suspect after --suspect-after (${ENV_SUSPECT_AFTER}) seconds of silence and "
    f"declared dead after --dead-after (${ENV_DEAD_AFTER}); {MIN_SUSPECT_AFTER_S:g} <= "
    f"suspect < dead <= {MAX_DEAD_AFTER_S:g}, e.g. --suspect-after 2.5 --dead-after 5"
)


def consumer_region(home: MeshHome, explicit: str | None = None) -> str | None:
    """Where this consumer is: ``explicit`` (``--region``), else ``$CMESH_REGION``, else the
    region of the home's local mesh's first node; None when none is known.

    With a region the orchestrator measures its round trips to the candidates it asks
    (``OrchestratorSettings.region``). Raises MeshError (``bad_region``) for a bad name.
    """
    region = explicit or os.environ.get(ENV_REGION) or _local_mesh_region(home)
    if region is not None and not re.fullmatch(REGION_PATTERN, region):
        raise MeshError(
            f"{region!r} is not a region name",
            code="bad_region",
            hint="lowercase letters, digits and dashes, e.g. eu-west",
        )
    return region


def _local_mesh_region(home: MeshHome) -> str | None:
    state = home.read_state() or {}
    nodes = state.get("nodes")
    first = nodes[0] if isinstance(nodes, list) and nodes else None
    region = first.get("region") if isinstance(first, dict) else None
    return region if isinstance(region, str) else None


def failure_detection(
    settings: OrchestratorSettings,
    *,
    suspect_after_s: float | None = None,
    dead_after_s: float | None = None,
) -> OrchestratorSettings:
    """``settings`` with the failure detector's bounds: each one explicit (``--suspect-after``,
    ``--dead-after``), else from ``$CMESH_SUSPECT_AFTER_S`` / ``$CMESH_DEAD_AFTER_S``, else
    the one ``settings`` has.

    Raises MeshError (``bad_liveness``) for a bound that is not a number of seconds, a
    suspect bound under ``MIN_SUSPECT_AFTER_S``, a dead bound over ``MAX_DEAD_AFTER_S``, or
    a suspect bound not below the dead one.
    """
    suspect = _bound(
        suspect_after_s, "--suspect-after", ENV_SUSPECT_AFTER, settings.suspect_after_s
    )
    dead = _bound(dead_after_s, "--dead-after", ENV_DEAD_AFTER, settings.dead_after_s)
    if suspect < MIN_SUSPECT_AFTER_S:
        raise _bad_liveness(f"a node cannot be suspect after {suspect:g} s: under a heartbeat")
    if dead > MAX_DEAD_AFTER_S:
        raise _bad_liveness(f"a node declared dead after {dead:g} s is never declared dead")
    if not suspect < dead:
        raise _bad_liveness(
            f"a node must be suspect ({suspect:g} s) before it is declared dead ({dead:g} s)"
        )
    return replace(settings, suspect_after_s=suspect, dead_after_s=dead)


def _bound(explicit: float | None, option: str, variable: str, default: float) -> float:
    """One bound in seconds: ``explicit`` (given as ``option``), else ``$variable``, else
    ``default``."""
    if explicit is not None:
        value, source = explicit, f"{option} {explicit:g}"
    else:
        text = os.environ.get(variable)
        if text is None or not text.strip():
            return default
        source = f"${variable}={text!r}"
        try:
            value = float(text)
        except ValueError:
            raise _bad_liveness(f"{source} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise _bad_liveness(f"{source} is not a positive number of seconds")
    return value


def _bad_liveness(message: str) -> MeshError:
    return MeshError(message, code="bad_liveness", hint=LIVENESS_HINT)


@contextmanager
def recovery_claim(home: MeshHome) -> Iterator[bool]:
    """Whether this is the one session of ``home`` that resumes unfinished jobs.

    An exclusive lock on ``<home>/consumer.lock``, held while the session lasts; the kernel
    drops it when the process dies, even by SIGKILL, so the next session takes over.
    """
    home.ensure()
    with (home.root / RECOVERY_LOCK).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def open_jobs(home: MeshHome) -> JobRepository:
    home.ensure()
    return JobRepository(open_database(sqlite_url(home.consumer_db)))


@asynccontextmanager
async def consumer_session(
    home: MeshHome,
    nats_url: str,
    *,
    settings: OrchestratorSettings | None = None,
    verification: VerificationSettings | None = None,
    resume: bool = True,
    region: str | None = None,
    suspect_after_s: float | None = None,
    dead_after_s: float | None = None,
) -> AsyncIterator[Orchestrator]:
    """A started orchestrator on the mesh at ``nats_url``; stopped and disconnected on exit.

    With ``resume``, the jobs a previous session left unfinished are taken up in the
    background (``orchestrator.recovery``), unless another live session of this home does.

    ``verification`` sets the network's default policy (for specs that name none) and the
    seed of its draws. With a ledger in the home (``app.ledger``), every contract is paid
    through it, and a proven fraud slashes the provider's stake when this home's identity
    is one of the ledger's arbiters (it is on a local mesh); the stake each provider holds
    there lowers its audit rate.

    The consumer's region is ``settings.region`` when set, else ``consumer_region(home,
    region)``. The failure detector's bounds are ``suspect_after_s`` and ``dead_after_s``
    when given, else those of the environment, else the settings' (``failure_detection``,
    which raises MeshError ``bad_liveness`` before anything connects).
    """
    settings = failure_detection(
        settings or OrchestratorSettings(),
        suspect_after_s=suspect_after_s,
        dead_after_s=dead_after_s,
    )
    if settings.region is None:
        settings = replace(settings, region=consumer_region(home, region))
    jobs = open_jobs(home)
    identity = load_or_create_identity(home.root)
    ledger = consumer_ledger(home, identity)
    transport = await NatsTransport.connect(nats_url, name="cmesh-consumer")
    orchestrator = Orchestrator(
        actor=Actor(identity=identity, transport=transport),
        jobs=jobs,
        settings=settings,
        ledger=ledger,
        verification=consumer_verification(
            jobs,
            identity,
            _arbiter_ledger(ledger, identity.did),
            settings=verification,
            stakes=ledger,
        ),
    )
    with recovery_claim(home) if resume else _no_claim() as claimed:
        try:
            await orchestrator.start()
            if claimed:
                orchestrator.recovery.start()
            yield orchestrator
        finally:
            await orchestrator.stop()
            await transport.close()


def _arbiter_ledger(ledger: Ledger | None, did: str) -> Ledger | None:
    """``ledger`` when ``did`` may sign the fraud records it slashes on, else None."""
    return ledger if ledger is not None and did in ledger.settings.arbiters else None


@contextmanager
def _no_claim() -> Iterator[bool]:
    yield False
