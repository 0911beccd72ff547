"""Durable state behind small repository classes (SQLite by default)."""

from computemesh.store.allocations import AllocationRecord, AllocationRepository
from computemesh.store.database import open_database, sqlite_url
from computemesh.store.jobs import FINAL_STATES, JobRecord, JobRepository, UnknownJob

__all__ = [
    "FINAL_STATES",
    "AllocationRecord",
    "AllocationRepository",
    "JobRecord",
    "JobRepository",
    "UnknownJob",
    "open_database",
    "sqlite_url",
]
