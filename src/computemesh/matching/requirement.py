"""A job's requirements compiled once into plain, hashable values the matchers read.

``Requirement.of(spec)`` turns a validated ``JobSpec`` into what matching needs: the amounts
to reserve, the hard filters (hashable, so jobs with the same filters share work in a batch)
and the soft-preference weights. Strings compared case-insensitively (GPU model and vendor,
cities) are kept as written for messages and folded where they are compared.
"""

from __future__ import annotations

from typing import NamedTuple

from computemesh.models.job import JobSpec, Preferences, compute_capability_value

CHECK_ORDER = (
    "executor",
    "network",
    "cpu",
    "memory",
    "gpu",
    "disk",
    "gpu_spec",
    "region",
    "architecture",
    "price",
    "provider",
    "country",
    "city",
    "organisation",
    "reputation",
    "pinned",
)
"""Every hard constraint by name, in the order reasons are listed and the funnel runs."""

CAPACITY_CHECKS = frozenset({"cpu", "memory", "gpu", "disk"})
"""The checks that read free capacity; all others depend only on the advertisement."""

Amounts = tuple[float, float, float, float]
"""cpu cores, memory MB, disk MB, GPUs: the order of every capacity vector here (memory,
disk and GPUs may be ints)."""


class GpuNeed(NamedTuple):
    """``number`` GPUs, each matching every detail given."""

    number: int
    model: str | None
    vendor: str | None
    min_vram_mb: int
    min_capability: int | None
    max_capability: int | None


class Filters(NamedTuple):
    """The hard constraints other than amounts; empty accept lists accept anything."""

    executor: str
    network: bool
    gpu: GpuNeed | None
    regions: tuple[str, ...]
    exclude_regions: tuple[str, ...]
    architectures: tuple[str, ...]
    max_rates: tuple[tuple[str, float], ...]
    """(rate field of ``models.market.Rates``, highest accepted) for each rate capped."""
    providers: tuple[str, ...]
    exclude_providers: tuple[str, ...]
    countries: tuple[str, ...]
    exclude_countries: tuple[str, ...]
    cities: tuple[str, ...]
    exclude_cities: tuple[str, ...]
    organisations: tuple[str, ...]
    min_reputation: float | None
    pinned: str | None


class Weights(NamedTuple):
    """Soft-preference weights; ``latency`` is 0 whenever ``near`` is None."""

    price: float
    latency: float
    reputation: float
    load: float
    success_rate: float
    near: str | None

    @property
    def total(self) -> float:
        return self.price + self.latency + self.reputation + self.load + self.success_rate


class Requirement(NamedTuple):
    """One job (or ensemble allocation) as the matchers see it."""

    name: str
    amounts: Amounts
    replicas: int
    filters: Filters
    weights: Weights

    @classmethod
    def of(cls, spec: JobSpec) -> Requirement:
        need, rules = spec.resources, spec.constraints
        gpus = need.gpu_count
        gpu = _gpu_need(spec) if gpus else None
        given = rules.model_fields_set
        if given <= _ONLY_PREFERENCES:
            filters = Filters(spec.executor, spec.network, gpu, *_NO_RULES)
        else:
            filters = _filters(spec, gpu)
        weights = _DEFAULT_WEIGHTS
        if "preferences" in given and rules.preferences.model_fields_set:
            weights = _weights_of(rules.preferences)
        amounts = (need.cpu, need.memory_mb, need.disk_mb, gpus)
        return cls(spec.name, amounts, spec.replicas, filters, weights)

    def active_checks(self) -> tuple[str, ...]:
        """The names of the checks this requirement sets, in ``CHECK_ORDER``."""
        rules = self.filters
        optional = {
            "network": rules.network,
            "gpu": self.amounts[3] > 0,
            "gpu_spec": rules.gpu is not None,
            "region": bool(rules.regions or rules.exclude_regions),
            "architecture": bool(rules.architectures),
            "price": bool(rules.max_rates),
            "provider": bool(rules.providers or rules.exclude_providers),
            "country": bool(rules.countries or rules.exclude_countries),
            "city": bool(rules.cities or rules.exclude_cities),
            "organisation": bool(rules.organisations),
            "reputation": rules.min_reputation is not None,
            "pinned": rules.pinned is not None,
        }
        return tuple(name for name in CHECK_ORDER if optional.get(name, True))


def _filters(spec: JobSpec, gpu: GpuNeed | None) -> Filters:
    rules = spec.constraints
    return Filters(
        executor=spec.executor,
        network=spec.network,
        gpu=gpu,
        regions=tuple(rules.regions),
        exclude_regions=tuple(rules.exclude_regions),
        architectures=tuple(rules.architectures),
        max_rates=_max_rates(spec),
        providers=tuple(rules.providers),
        exclude_providers=tuple(rules.exclude_providers),
        countries=tuple(rules.countries),
        exclude_countries=tuple(rules.exclude_countries),
        cities=tuple(rules.cities),
        exclude_cities=tuple(rules.exclude_cities),
        organisations=tuple(rules.organisations),
        min_reputation=rules.min_reputation,
        pinned=rules.pinned_node,
    )


_ONLY_PREFERENCES = frozenset({"preferences"})
_NO_RULES = ((), (), (), (), (), (), (), (), (), (), (), None, None)
"""Every field of ``Filters`` after ``gpu`` when no constraint is set."""


def _max_rates(spec: JobSpec) -> tuple[tuple[str, float], ...]:
    rules = spec.constraints
    limits = (
        ("price_per_cpu_hour", rules.max_price_per_cpu_hour),
        ("price_per_billion_fuel", rules.max_price_per_billion_fuel),
        ("price_per_gb_out", rules.max_price_per_gb_out),
        ("price_per_gb_hour", rules.max_price_per_gb_hour),
    )
    return tuple((name, limit) for name, limit in limits if limit is not None)


def _gpu_need(spec: JobSpec) -> GpuNeed | None:
    need = spec.resources
    if not need.needs_gpu_match():
        return None
    return GpuNeed(
        number=need.gpu_count,
        model=need.gpu_model,
        vendor=need.gpu_vendor,
        min_vram_mb=need.vram_mb,
        min_capability=_capability(need.min_compute_capability),
        max_capability=_capability(need.max_compute_capability),
    )


def _weights_of(prefer: Preferences) -> Weights:
    return Weights(
        price=prefer.price,
        latency=prefer.latency if prefer.near is not None else 0.0,
        reputation=prefer.reputation,
        load=prefer.load,
        success_rate=prefer.success_rate,
        near=prefer.near,
    )


_DEFAULT_WEIGHTS = _weights_of(Preferences())


def _capability(text: str | None) -> int | None:
    return None if text is None else compute_capability_value(text)
