"""The durable store: SQLite by default (any SQLAlchemy URL works), one schema for all roles."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


def now_s() -> float:
    return time.time()


class JobRow(Base):
    """A consumer's job: written before the submission is acknowledged."""

    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    contracts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    verified: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    """Events ``{"at", "event", "detail"}``, oldest first (``store.jobs``)."""
    created_at: Mapped[float] = mapped_column(Float, default=now_s)
    updated_at: Mapped[float] = mapped_column(Float, default=now_s, onupdate=now_s)


class SupersededContractRow(Base):
    """A contract a job dropped for another provider's (relocation, migration, resume),
    kept until its escrow is settled: it may be paid for a checkpoint the job resumed from."""

    __tablename__ = "superseded_contracts"

    contract_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    contract: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, default=now_s)


class AllocationRow(Base):
    """A provider's allocation: written before the contract is countersigned."""

    __tablename__ = "allocations"

    contract_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    consumer: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    contract: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now_s)
    updated_at: Mapped[float] = mapped_column(Float, default=now_s, onupdate=now_s)


class QueuedJobRow(Base):
    """A consumer's job waiting for capacity: higher ``priority`` first, then oldest."""

    __tablename__ = "placement_queue"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    priority: Mapped[int] = mapped_column(Integer, index=True)
    enqueued_at: Mapped[float] = mapped_column(Float, default=now_s)
    reason: Mapped[str] = mapped_column(Text, default="")


class CheckpointRow(Base):
    """A verified checkpoint a provider pushed: its signed document and archive bytes."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("contract_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    contract_id: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    archive: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float, default=now_s)


class LogChunkRow(Base):
    """A chunk of a running job's output, as its provider pushed it."""

    __tablename__ = "log_chunks"
    __table_args__ = (UniqueConstraint("contract_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    contract_id: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(Integer)
    stream: Mapped[str] = mapped_column(String(8))
    data: Mapped[str] = mapped_column(Text)
    dropped: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float, default=now_s)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _enable_sqlite_durability(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def open_database(url: str) -> sessionmaker[Any]:
    """Connect, create the schema if missing, and return a session factory."""
    engine: Engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _enable_sqlite_durability)
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)
