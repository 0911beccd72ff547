"""The hard constraints of ``matching.constraints``, computed over a whole index at once.

Every function here returns one boolean per index row (``0 .. index.size``): True where
the row passes. A mask may be a view of an index column: read it, never write to it.
Rows that hold no live node may read either way; callers combine with ``index.alive``.
``free`` is a ``4 x index.size`` capacity matrix, the index's own free capacity unless a
batch passes what it has left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from numpy.typing import NDArray

from computemesh.matching.index import NodeIndex
from computemesh.matching.requirement import CAPACITY_CHECKS, Requirement
from computemesh.matching.vocabulary import Vocabulary
from computemesh.models.market import RATE_FIELDS

Mask = NDArray[np.bool_]
Capacity = NDArray[np.float64]
MaskFunction = Callable[[NodeIndex, Requirement, Capacity], Mask]

SMALL_SET = 4
"""Up to this many codes, a few ``==`` beat a hash or table lookup."""


def constraint_masks(
    index: NodeIndex, need: Requirement, free: Capacity | None = None
) -> dict[str, Mask]:
    """The pass mask of each check ``need`` sets, keyed by name in ``CHECK_ORDER``."""
    capacity = index.free[:, : index.size] if free is None else free
    return {name: MASKS[name](index, need, capacity) for name in need.active_checks()}


def feasible_mask(
    index: NodeIndex,
    need: Requirement,
    free: Capacity | None = None,
    *,
    checks: Iterable[str] | None = None,
) -> Mask:
    """Live rows passing every check in ``checks`` (default: all that ``need`` sets)."""
    capacity = index.free[:, : index.size] if free is None else free
    live = index.alive[: index.size]
    mask: Mask | None = None
    for name in need.active_checks() if checks is None else checks:
        passes = MASKS[name](index, need, capacity)
        if mask is None:
            mask = live & passes
        else:
            mask &= passes
    return live.copy() if mask is None else mask


def static_mask(index: NodeIndex, need: Requirement) -> Mask:
    """Live rows passing every check that does not read free capacity."""
    checks = [name for name in need.active_checks() if name not in CAPACITY_CHECKS]
    return feasible_mask(index, need, checks=checks)


def member(column: NDArray[np.int32], codes: NDArray[np.int32]) -> Mask:
    """Rows whose code is one of ``codes``."""
    if len(codes) == 0:
        return np.zeros(len(column), dtype=bool)
    if len(codes) <= SMALL_SET:
        mask: Mask = column == codes[0]
        for code in codes[1:]:
            mask |= column == code
        return mask
    found: Mask = np.isin(column, codes)
    return found


def _listed(
    column: NDArray[np.int32],
    vocabulary: Vocabulary,
    accepted: tuple[str, ...],
    rejected: tuple[str, ...],
) -> Mask:
    mask = np.ones(len(column), dtype=bool)
    if accepted:
        mask = member(column, vocabulary.known_codes(accepted))
    if rejected:
        mask &= ~member(column, vocabulary.known_codes(rejected))
    return mask


def _rows_of(index: NodeIndex, dids: Iterable[str]) -> list[int]:
    return [row for row in (index.row_of(did) for did in dids) if row is not None]


def _executor(index: NodeIndex, need: Requirement, free: Capacity) -> Mask:
    code = index.executors.find(need.filters.executor)
    if code < 0:
        return np.zeros(index.size, dtype=bool)
    return index.offers[code, : index.size]


def _network(index: NodeIndex, need: Requirement, free: Capacity) -> Mask:
    return index.network[: index.size]


def _amount(position: int) -> MaskFunction:
    def mask(index: NodeIndex, need: Requirement, free: Capacity) -> Mask:
        fits: Mask = free[position] >= need.amounts[position]
        return fits

    return mask


def _gpu_spec(index: NodeIndex, need: Requirement, free: Capacity) -> Mask:
    want = need.filters.gpu
    assert want is not None
    return index.gpus.matching_counts(want, index.size) >= want.number


def _region(index: NodeIndex, need: Requirement, free: Capacity) -> Mask:
    rules = need.filters
    column = index.region[: index.size]
    return _listed(column, index.regions, rules.regions, rules.exclude_regions)


def _country(index: NodeIndex, need: Requirement, free: Capacity) -> Mask:
    rules = need.filters
    column = index.country[: index.size]
    return _listed(column, index.countries, rules.countries, rules.exclude_countries)


def _city(index: NodeIndex, need: Requirement, free: Capacity) -> Mask:
    rules = need.filters
    accepted = tuple(city.casefold() for city in rules.cities)
    rejected = tuple(city.casefold() for city in rules.exclude_cities)
    return _listed(index.city[: index.size], index.cities, accepted, rejected)


def _architecture(index: NodeIndex, need: Requirement, free: Capacity) -> Mask:
    codes = index.architectures.known_codes(need.filters.architectures)
    return member(index.architecture[: index.size], codes)


def _price(index: NodeIndex, need: Requirement, free: Capacity) -> Mask:
    mask = np.ones(index.size, dtype=bool)
    for name, limit in need.filters.max_rates:
        mask &= index.rates[RATE_FIELDS.index(name), : index.size] <= limit
    return mask


def _provider(index: NodeIndex, need: Requirement, free: Capacity) -> Mask:
    rules = need.filters
    if rules.providers:
        mask = np.zeros(index.size, dtype=bool)
        mask[_rows_of(index, rules.providers)] = True
    else:
        mask = np.ones(index.size, dtype=bool)
    mask[_rows_of(index, rules.exclude_providers)] = False
    return mask


def _organisation(index: NodeIndex, need: Requirement, free: Capacity) -> Mask:
    codes = index.organisations.known_codes(need.filters.organisations)
    mask = np.zeros(index.size, dtype=bool)
    for slot in range(index.org_slots):
        mask |= member(index.org_codes[slot, : index.size], codes)
    return mask


def _reputation(index: NodeIndex, need: Requirement, free: Capacity) -> Mask:
    minimum = need.filters.min_reputation
    assert minimum is not None
    return index.reputation[: index.size] >= minimum


def _pinned(index: NodeIndex, need: Requirement, free: Capacity) -> Mask:
    pinned = need.filters.pinned
    assert pinned is not None
    mask = np.zeros(index.size, dtype=bool)
    mask[_rows_of(index, [pinned])] = True
    return mask


MASKS: dict[str, MaskFunction] = {
    "executor": _executor,
    "network": _network,
    "cpu": _amount(0),
    "memory": _amount(1),
    "gpu": _amount(3),
    "disk": _amount(2),
    "gpu_spec": _gpu_spec,
    "region": _region,
    "architecture": _architecture,
    "price": _price,
    "provider": _provider,
    "country": _country,
    "city": _city,
    "organisation": _organisation,
    "reputation": _reputation,
    "pinned": _pinned,
}
