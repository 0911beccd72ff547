"""Durable state behind small repository classes (SQLite by default)."""

from computemesh.store.allocations import AllocationRecord, AllocationRepository
from computemesh.store.database import open_database, sqlite_url
from computemesh.store.jobs import FINAL_STATES, JobRecord, JobRepository, UnknownJob
from computemesh.store.queue import PlacementQueue, QueuedJob
from computemesh.store.verification import FraudRepository, ReputationRepository

__all__ = [
    "FINAL_STATES",
    "AllocationRecord",
    "AllocationRepository",
    "FraudRepository",
    "JobRecord",
    "JobRepository",
    "PlacementQueue",
    "QueuedJob",
    "ReputationRepository",
    "UnknownJob",
    "open_database",
    "sqlite_url",
]
