"""Pure checks of a job's hard requirements against one provider's advertisement.

The same function decides whether a node bids and whether a consumer accepts the bid, so
both sides agree on what "fits" means. Each unmet requirement is returned as a sentence
that starts with the constraint's name; an empty list means the offer fits.

This is the per-offer statement of the semantics; ``matching.filters`` computes the same
checks over a whole ``NodeIndex`` at once, and the tests hold the two to the same answers.
"""

from __future__ import annotations

from collections.abc import Callable

from computemesh.matching.plausibility import implausible_values
from computemesh.matching.requirement import Amounts, Requirement
from computemesh.models.job import JobSpec
from computemesh.models.market import RATE_UNITS, Advertisement, GpuInfo

Check = Callable[[Requirement, Advertisement, str, Amounts], str | None]


def unmet_requirements(spec: JobSpec, offer: Advertisement, provider: str) -> list[str]:
    """Every hard requirement of ``spec`` that ``offer`` (from ``provider``) fails.

    An advertisement with impossible values (``implausible_values``) fails as a whole: its
    reasons are those problems, each starting ``advertisement:``.
    """
    problems = implausible_values(offer)
    if problems:
        return [f"advertisement: {problem}" for problem in problems]
    return [reason for _, reason in failed_constraints(Requirement.of(spec), offer, provider)]


def offered_amounts(offer: Advertisement) -> Amounts:
    """The free capacity an advertisement states, as a capacity vector."""
    free = offer.free
    return (free.cpu, float(free.memory_mb), float(free.disk_mb), float(free.gpu_count))


def failed_constraints(
    need: Requirement, offer: Advertisement, provider: str, free: Amounts | None = None
) -> list[tuple[str, str]]:
    """``(check name, reason)`` for each active check that fails, in ``CHECK_ORDER``.

    ``free`` replaces the advertised free capacity (for capacity already promised).
    """
    available = offered_amounts(offer) if free is None else free
    failures = []
    for name in need.active_checks():
        reason = CHECKS[name](need, offer, provider, available)
        if reason is not None:
            failures.append((name, reason))
    return failures


def _executor(need: Requirement, offer: Advertisement, provider: str, free: Amounts) -> str | None:
    wanted = need.filters.executor
    if wanted in offer.executors:
        return None
    return f"executor: {wanted} not offered (offers {', '.join(offer.executors) or 'none'})"


def _network(need: Requirement, offer: Advertisement, provider: str, free: Amounts) -> str | None:
    if offer.network:
        return None
    return "network: the job needs network access, the node does not allow it"


def _amount_reason(name: str, unit: str, wanted: float, available: float, total: float) -> str:
    if wanted > total:
        return f"{name}: needs {wanted:g}{unit}, node has {total:g}{unit}"
    return f"{name}: needs {wanted:g}{unit}, {available:g}{unit} free now"


def _amount_check(position: int, name: str, unit: str) -> Check:
    def check(need: Requirement, offer: Advertisement, provider: str, free: Amounts) -> str | None:
        wanted, available = need.amounts[position], free[position]
        if wanted <= available:
            return None
        hardware = offer.hardware
        totals = (hardware.cpu_count, hardware.memory_mb, hardware.disk_mb, len(hardware.gpus))
        return _amount_reason(name, unit, wanted, available, float(totals[position]))

    return check


def gpu_matches(need: Requirement, gpu: GpuInfo) -> bool:
    """Whether one GPU meets every detail of the job's GPU requirement."""
    want = need.filters.gpu
    if want is None:
        return True
    if want.model is not None and want.model.casefold() not in gpu.model.casefold():
        return False
    if want.vendor is not None and want.vendor.casefold() != gpu.vendor.casefold():
        return False
    if gpu.vram_mb < want.min_vram_mb:
        return False
    if want.min_capability is None and want.max_capability is None:
        return True
    if gpu.compute_capability is None:
        return False
    major, minor = gpu.compute_capability.split(".")
    value = int(major) * 100 + int(minor)
    low, high = want.min_capability, want.max_capability
    return (low is None or value >= low) and (high is None or value <= high)


def _gpu_spec(need: Requirement, offer: Advertisement, provider: str, free: Amounts) -> str | None:
    want = need.filters.gpu
    assert want is not None
    matching = sum(1 for gpu in offer.hardware.gpus if gpu_matches(need, gpu))
    if matching >= want.number:
        return None
    kind = want.model or "any"
    if want.vendor is not None:
        kind = f"{want.vendor} {kind}"
    capability = ""
    if want.min_capability is not None:
        capability += f", compute capability >= {_capability_text(want.min_capability)}"
    if want.max_capability is not None:
        capability += f", compute capability <= {_capability_text(want.max_capability)}"
    return (
        f"gpu model/vram: needs {want.number} x {kind} with {want.min_vram_mb} MB"
        f"{capability}, {matching} match"
    )


def _capability_text(value: int) -> str:
    return f"{value // 100}.{value % 100}"


def _listed(
    name: str,
    value: str | None,
    accepted: tuple[str, ...],
    rejected: tuple[str, ...],
    *,
    fold: bool = False,
) -> str | None:
    """Accept-list and reject-list semantics shared by region, country and city."""
    key = value.casefold() if fold and value is not None else value
    accept = {item.casefold() for item in accepted} if fold else set(accepted)
    reject = {item.casefold() for item in rejected} if fold else set(rejected)
    if accepted and key not in accept:
        shown = "unknown" if value is None else value
        return f"{name}: {shown} not in {', '.join(accepted)}"
    if key is not None and key in reject:
        return f"{name}: {value} is excluded"
    return None


def _region(need: Requirement, offer: Advertisement, provider: str, free: Amounts) -> str | None:
    rules = need.filters
    return _listed("region", offer.region, rules.regions, rules.exclude_regions)


def _country(need: Requirement, offer: Advertisement, provider: str, free: Amounts) -> str | None:
    rules = need.filters
    return _listed("country", offer.country, rules.countries, rules.exclude_countries)


def _city(need: Requirement, offer: Advertisement, provider: str, free: Amounts) -> str | None:
    rules = need.filters
    return _listed("city", offer.city, rules.cities, rules.exclude_cities, fold=True)


def _architecture(
    need: Requirement, offer: Advertisement, provider: str, free: Amounts
) -> str | None:
    accepted, architecture = need.filters.architectures, offer.hardware.architecture
    if architecture in accepted:
        return None
    return f"architecture: {architecture} not in {', '.join(accepted)}"


def _price(need: Requirement, offer: Advertisement, provider: str, free: Amounts) -> str | None:
    above = [
        f"{getattr(offer, name):g}/{RATE_UNITS[name]} above max {limit:g}"
        for name, limit in need.filters.max_rates
        if getattr(offer, name) > limit
    ]
    return f"price: {'; '.join(above)}" if above else None


def _provider(need: Requirement, offer: Advertisement, provider: str, free: Amounts) -> str | None:
    rules = need.filters
    if rules.providers and provider not in rules.providers:
        return "provider: not in the job's allowed provider list"
    if provider in rules.exclude_providers:
        return "provider: in the job's excluded provider list"
    return None


def _organisation(
    need: Requirement, offer: Advertisement, provider: str, free: Amounts
) -> str | None:
    wanted = need.filters.organisations
    if set(wanted) & set(offer.organisations):
        return None
    return f"organisation: not a member of {', '.join(wanted)}"


def _reputation(
    need: Requirement, offer: Advertisement, provider: str, free: Amounts
) -> str | None:
    minimum = need.filters.min_reputation
    assert minimum is not None
    if offer.reputation is None:
        return f"reputation: unknown, needs at least {minimum:g}"
    if offer.reputation < minimum:
        return f"reputation: {offer.reputation:g} below min {minimum:g}"
    return None


def _pinned(need: Requirement, offer: Advertisement, provider: str, free: Amounts) -> str | None:
    pinned = need.filters.pinned
    return None if provider == pinned else f"pinned: the job runs only on {pinned}"


CHECKS: dict[str, Check] = {
    "executor": _executor,
    "network": _network,
    "cpu": _amount_check(0, "cpu", ""),
    "memory": _amount_check(1, "memory", " MB"),
    "gpu": _amount_check(3, "gpu", ""),
    "disk": _amount_check(2, "disk", " MB"),
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
