"""The durable store: SQLite by default (any SQLAlchemy URL works), one schema for all roles."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Boolean, Float, String, Text, create_engine, event
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
    created_at: Mapped[float] = mapped_column(Float, default=now_s)
    updated_at: Mapped[float] = mapped_column(Float, default=now_s, onupdate=now_s)


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
