"""A columnar index of provider advertisements, keyed by provider DID.

One row per live node; each quality a matcher reads is a NumPy column (capacities as a
``4 x rows`` matrix in ``Amounts`` order, categorical values as integer codes, one boolean
column per executor kind, GPUs and latencies in side tables), so one job is checked
against every node with a few array operations.

Contract:
- ``upsert`` adds or replaces a node; an advertisement with impossible values is refused
  (logged, returned as problems) and the node's previous entry is removed, since its state
  is unknown. ``heartbeat`` refreshes free capacity and the last-seen time.
- Free capacity is what the node advertised minus what was reserved here and not released;
  never below zero. Reservations survive re-advertisement and end with ``release`` or the
  node's removal.
- Rows are reused after removal; row numbers are internal and never part of a result.
- Not thread-safe: one owner (the orchestrator's event loop) mutates it.
"""

from __future__ import annotations

import logging
import re

import numpy as np
from numpy.typing import NDArray

from computemesh.matching.constraints import offered_amounts
from computemesh.matching.gpu_table import GpuTable
from computemesh.matching.latency_table import LatencyTable
from computemesh.matching.plausibility import implausible_values
from computemesh.matching.requirement import Amounts
from computemesh.matching.scoring import (
    StaticWeights,
    did_tiebreak,
    price_score,
    reputation_score,
    success_score,
    weighted_one,
    weighted_sum,
)
from computemesh.matching.vocabulary import Vocabulary
from computemesh.models.job import DID_PATTERN, Resources
from computemesh.models.market import RATE_FIELDS, Advertisement, Capacity

log = logging.getLogger(__name__)

MAX_EXECUTOR_KINDS = 64
WEIGHTED_KEPT = 8
"""Weighted score columns kept up to date (one per distinct set of weights in use)."""
MAX_ORGANISATIONS = 16
SCORE_ROWS = ("price", "reputation", "load", "success_rate")
"""The rows of ``NodeIndex.scores``: per-node quality scores that do not depend on a job."""
_DID = re.compile(DID_PATTERN)


def resource_amounts(need: Resources) -> Amounts:
    return (need.cpu, float(need.memory_mb), float(need.disk_mb), float(need.gpu_count))


class NodeIndex:
    """Live advertisements as columns; see the module docstring for the contract."""

    def __init__(self, *, capacity: int = 1024) -> None:
        self.capacity = 0
        self.size = 0
        self.version = 0
        self.regions, self.architectures, self.executors = Vocabulary(), Vocabulary(), Vocabulary()
        self.countries, self.cities, self.organisations = Vocabulary(), Vocabulary(), Vocabulary()
        self.gpus = GpuTable()
        self.latency = LatencyTable(0)
        self.dids: list[str | None] = []
        self.adverts: list[Advertisement | None] = []
        self._rows: dict[str, int] = {}
        self._spare: list[int] = []
        self._reservations: dict[str, tuple[str, Amounts]] = {}
        self._track: dict[str, tuple[int, int]] = {}
        self._reputation_view: dict[str, float] = {}
        """DID -> reputation set by the index's owner, used over the advertised one."""
        self._estimates: tuple[int, NDArray[np.float64]] | None = None
        self._weighted: dict[StaticWeights, NDArray[np.float64]] = {}
        self.org_slots = 0
        self.alive = np.zeros(0, dtype=np.bool_)
        self.tiebreak = np.zeros(0, dtype=np.int64)
        self.last_seen = np.zeros(0, dtype=np.float64)
        self.total = np.zeros((4, 0), dtype=np.float64)
        """Hardware totals; rows in ``Amounts`` order."""
        self.advertised = np.zeros((4, 0), dtype=np.float64)
        self.reserved = np.zeros((4, 0), dtype=np.float64)
        self.free = np.zeros((4, 0), dtype=np.float64)
        """Advertised free capacity minus reservations, never below zero."""
        self.offers = np.zeros((MAX_EXECUTOR_KINDS, 0), dtype=np.bool_)
        """``offers[code, row]``: the node offers the executor with that vocabulary code."""
        self.network = np.zeros(0, dtype=np.bool_)
        """The node gives network access to jobs that declare they need it."""
        self.architecture = np.zeros(0, dtype=np.int32)
        self.region = np.zeros(0, dtype=np.int32)
        self.country = np.zeros(0, dtype=np.int32)
        self.city = np.zeros(0, dtype=np.int32)
        self.org_codes = np.zeros((MAX_ORGANISATIONS, 0), dtype=np.int32)
        self.rates = np.zeros((len(RATE_FIELDS), 0), dtype=np.float64)
        """``rates[i, row]``: the node's rate named ``RATE_FIELDS[i]``."""
        self.reputation = np.zeros(0, dtype=np.float64)
        self.scores = np.zeros((len(SCORE_ROWS), 0), dtype=np.float64)
        """Job-independent quality scores; rows in ``SCORE_ROWS`` order."""
        self._grow(max(1, capacity))

    # Reading ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, did: object) -> bool:
        return did in self._rows

    def row_of(self, did: str) -> int | None:
        return self._rows.get(did)

    def did_at(self, row: int) -> str:
        did = self.dids[row]
        assert did is not None, f"row {row} is empty"
        return did

    def advertisement(self, did: str) -> Advertisement:
        """The advertisement last accepted from ``did``; KeyError if none."""
        advert = self.adverts[self._rows[did]]
        assert advert is not None
        return advert

    def providers(self) -> list[str]:
        return sorted(self._rows)

    def free_of(self, did: str) -> Amounts:
        """Free capacity of ``did`` after reservations."""
        row = self._rows[did]
        cpu, memory, disk, gpu = (float(v) for v in self.free[:, row])
        return (cpu, memory, disk, gpu)

    def region_latency(self) -> NDArray[np.float64]:
        """Round-trip estimates between region codes (see ``latency_table``); cached."""
        if self._estimates is None or self._estimates[0] != self.version:
            live = self.alive[: self.size]
            matrix = self.latency.region_estimates(
                self.region[: self.size], live, len(self.regions)
            )
            self._estimates = (self.version, matrix)
        return self._estimates[1]

    def weighted_scores(self, weights: StaticWeights) -> NDArray[np.float64]:
        """``scoring.weighted_sum`` of ``scores`` for every row, kept current as rows change.

        The last ``WEIGHTED_KEPT`` sets of weights asked for are maintained row by row, so
        asking again costs nothing. Read-only for callers.
        """
        column = self._weighted.get(weights)
        if column is None:
            if len(self._weighted) >= WEIGHTED_KEPT:
                del self._weighted[next(iter(self._weighted))]
            column = self._weighted[weights] = weighted_sum(weights, self.scores)
        return column

    # Writing ------------------------------------------------------------------------------

    def upsert(self, did: str, offer: Advertisement, *, seen_at: float) -> list[str]:
        """Add or replace ``did``'s advertisement; returns the problems that refused it."""
        problems = self._problems(did, offer)
        if problems:
            log.warning("advertisement from %s dropped: %s", did, "; ".join(problems))
            self.remove(did)
            return problems
        row = self._rows.get(did)
        if row is None:
            row = self._new_row(did)
        self._write(row, offer)
        self.last_seen[row] = seen_at
        self._refresh_free(row)
        self.version += 1
        return []

    def heartbeat(self, did: str, free: Capacity, *, seen_at: float) -> bool:
        """Refresh free capacity and last-seen time; False if unknown or impossible."""
        row = self._rows.get(did)
        if row is None:
            return False
        offered = (free.cpu, float(free.memory_mb), float(free.disk_mb), float(free.gpu_count))
        if not all(0 <= a <= t for a, t in zip(offered, self.total[:, row], strict=True)):
            log.warning("heartbeat from %s ignored: free capacity above its total", did)
            return False
        self.advertised[:, row] = offered
        self.last_seen[row] = seen_at
        self._refresh_free(row)
        self.version += 1
        return True

    def remove(self, did: str) -> bool:
        """Forget ``did`` and its reservations; False if it was not indexed."""
        row = self._rows.pop(did, None)
        if row is None:
            return False
        self.alive[row] = False
        self.dids[row] = None
        self.adverts[row] = None
        self.gpus.clear_node(row)
        self.latency.clear_row(row)
        self.reserved[:, row] = 0.0
        self._reservations = {
            key: held for key, held in self._reservations.items() if held[0] != did
        }
        self._spare.append(row)
        self.version += 1
        return True

    def drop_stale(self, now: float, max_age: float) -> list[str]:
        """Remove every node last seen more than ``max_age`` before ``now``; their DIDs."""
        live = self.alive[: self.size]
        stale = np.flatnonzero(live & (self.last_seen[: self.size] < now - max_age))
        dropped = sorted(self.did_at(int(row)) for row in stale)
        for did in dropped:
            self.remove(did)
        return dropped

    def reserve(self, key: str, did: str, need: Resources | Amounts) -> bool:
        """Hold ``need`` on ``did`` under ``key``; False (nothing held) if it does not fit.

        Idempotent per key: reserving a key already held succeeds without holding more.
        """
        if key in self._reservations:
            return True
        row = self._rows.get(did)
        if row is None:
            return False
        amounts = resource_amounts(need) if isinstance(need, Resources) else need
        if any(a > f for a, f in zip(amounts, self.free[:, row], strict=True)):
            return False
        self._reservations[key] = (did, amounts)
        self.reserved[:, row] += amounts
        self._refresh_free(row)
        self.version += 1
        return True

    def release(self, key: str) -> bool:
        """Give back what ``key`` held; False if it held nothing."""
        held = self._reservations.pop(key, None)
        if held is None:
            return False
        did, amounts = held
        row = self._rows[did]
        self.reserved[:, row] = np.maximum(self.reserved[:, row] - amounts, 0.0)
        self._refresh_free(row)
        self.version += 1
        return True

    def record_outcome(self, did: str, *, succeeded: bool) -> None:
        """Count one finished allocation on ``did`` toward its success-rate score."""
        successes, attempts = self._track.get(did, (0, 0))
        self._track[did] = (successes + int(succeeded), attempts + 1)
        row = self._rows.get(did)
        if row is not None:
            self.scores[3, row] = success_score(*self._track[did])
            self._rescore(row)
            self.version += 1

    def set_reputation(self, did: str, reputation: float | None) -> None:
        """Use ``reputation`` (0..1) for ``did`` instead of what it advertises.

        It counts for ``min_reputation`` and the reputation score, is kept when the node
        re-advertises, leaves the index and comes back; None returns to the advertised value.
        """
        if reputation is None:
            self._reputation_view.pop(did, None)
        else:
            if not 0.0 <= reputation <= 1.0:
                raise ValueError(f"reputation {reputation} is outside 0..1")
            self._reputation_view[did] = reputation
        row = self._rows.get(did)
        if row is not None:
            self._write_reputation(row, self.adverts[row])
            self._rescore(row)
            self.version += 1

    # Internals ----------------------------------------------------------------------------

    def _problems(self, did: str, offer: Advertisement) -> list[str]:
        problems = [] if _DID.match(did) else [f"{did!r} is not a did:key"]
        problems.extend(implausible_values(offer))
        new_kinds = {e for e in offer.executors if self.executors.find(e) < 0}
        if len(self.executors) + len(new_kinds) > MAX_EXECUTOR_KINDS:
            problems.append(f"more than {MAX_EXECUTOR_KINDS} executor kinds in the index")
        return problems

    def _new_row(self, did: str) -> int:
        if self._spare:
            row = self._spare.pop()
        else:
            if self.size == self.capacity:
                self._grow(2 * self.capacity)
            row = self.size
            self.size += 1
        self._rows[did] = row
        self.dids[row] = did
        self.alive[row] = True
        self.tiebreak[row] = did_tiebreak(did)
        self.reserved[:, row] = 0.0
        return row

    def _write(self, row: int, offer: Advertisement) -> None:
        hardware = offer.hardware
        self.adverts[row] = offer
        self.total[:, row] = (
            hardware.cpu_count,
            hardware.memory_mb,
            hardware.disk_mb,
            len(hardware.gpus),
        )
        self.advertised[:, row] = offered_amounts(offer)
        self.offers[:, row] = False
        for name in offer.executors:
            self.offers[self.executors.code(name), row] = True
        self.network[row] = offer.network
        self.architecture[row] = self.architectures.code(hardware.architecture)
        self.region[row] = self.regions.code(offer.region)
        self.country[row] = self.countries.code(offer.country)
        self.city[row] = self.cities.code(None if offer.city is None else offer.city.casefold())
        self.org_codes[:, row] = -1
        for slot, name in enumerate(sorted(set(offer.organisations))[:MAX_ORGANISATIONS]):
            self.org_codes[slot, row] = self.organisations.code(name)
        self.org_slots = max(self.org_slots, len(set(offer.organisations)))
        self.rates[:, row] = [getattr(offer, name) for name in RATE_FIELDS]
        self._write_reputation(row, offer)
        self.scores[0, row] = price_score(offer.price_per_cpu_hour)
        self.scores[3, row] = success_score(*self._track.get(self.did_at(row), (0, 0)))
        self.gpus.set_node(row, hardware.gpus)
        reports = {self.regions.code(region): rtt for region, rtt in offer.latency_ms.items()}
        self.latency.set_row(row, reports)

    def _write_reputation(self, row: int, offer: Advertisement | None) -> None:
        advertised = None if offer is None else offer.reputation
        reputation = self._reputation_view.get(self.did_at(row), advertised)
        self.reputation[row] = np.nan if reputation is None else reputation
        self.scores[1, row] = reputation_score(reputation)

    def _refresh_free(self, row: int) -> None:
        self.free[:, row] = np.maximum(self.advertised[:, row] - self.reserved[:, row], 0.0)
        self.scores[2, row] = self.free[0, row] / self.total[0, row]
        self._rescore(row)

    def _rescore(self, row: int) -> None:
        if self._weighted:
            qualities = self.scores[:, row].tolist()
            for weights, column in self._weighted.items():
                column[row] = weighted_one(weights, qualities)

    def _grow(self, capacity: int) -> None:
        for name, fill in _FILLS.items():
            old = getattr(self, name)
            new = np.full((*old.shape[:-1], capacity), fill, dtype=old.dtype)
            new[..., : self.capacity] = old
            setattr(self, name, new)
        self.dids.extend([None] * (capacity - self.capacity))
        self.adverts.extend([None] * (capacity - self.capacity))
        self.latency.grow(capacity)
        self._weighted.clear()
        self.capacity = capacity


_FILLS: dict[str, object] = {
    "alive": False,
    "tiebreak": 0,
    "last_seen": 0.0,
    "total": 0.0,
    "advertised": 0.0,
    "reserved": 0.0,
    "free": 0.0,
    "offers": False,
    "network": False,
    "architecture": -1,
    "region": -1,
    "country": -1,
    "city": -1,
    "org_codes": -1,
    "rates": 0.0,
    "reputation": np.nan,
    "scores": 0.0,
}
