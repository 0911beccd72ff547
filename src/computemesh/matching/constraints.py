"""Pure checks of a job's hard requirements against one provider's advertisement.

The same function decides whether a node bids and whether a consumer accepts the bid, so
both sides agree on what "fits" means. Each unmet requirement is returned as a sentence;
an empty list means the offer fits.
"""

from __future__ import annotations

from computemesh.models.job import JobSpec
from computemesh.models.market import Advertisement, Bid


def unmet_requirements(spec: JobSpec, offer: Advertisement, provider: str) -> list[str]:
    """Every hard requirement of ``spec`` that ``offer`` (from ``provider``) fails."""
    return [
        *_unmet_resources(spec, offer),
        *_unmet_constraints(spec, offer, provider),
    ]


def _unmet_resources(spec: JobSpec, offer: Advertisement) -> list[str]:
    need, free, hardware = spec.resources, offer.free, offer.hardware
    reasons = []
    if spec.executor not in offer.executors:
        offered = ", ".join(offer.executors) or "none"
        reasons.append(f"executor: {spec.executor} not offered (offers {offered})")
    checks = (
        ("cpu", need.cpu, free.cpu, hardware.cpu_count, ""),
        ("memory", need.memory_mb, free.memory_mb, hardware.memory_mb, " MB"),
        ("gpu", need.gpu_count, free.gpu_count, len(hardware.gpus), ""),
    )
    for name, wanted, available, total, unit in checks:
        if wanted > total:
            reasons.append(f"{name}: needs {wanted:g}{unit}, node has {total:g}{unit}")
        elif wanted > available:
            reasons.append(f"{name}: needs {wanted:g}{unit}, {available:g}{unit} free now")
    if need.disk_mb > free.disk_mb:
        reasons.append(f"disk: needs {need.disk_mb} MB, node has {free.disk_mb} MB")
    if need.gpu_count and (need.gpu_model or need.vram_mb):
        matching = [
            gpu
            for gpu in offer.hardware.gpus
            if (need.gpu_model is None or need.gpu_model.lower() in gpu.model.lower())
            and gpu.vram_mb >= need.vram_mb
        ]
        if len(matching) < need.gpu_count:
            reasons.append(
                f"gpu model/vram: needs {need.gpu_count} x {need.gpu_model or 'any'}"
                f" with {need.vram_mb} MB, {len(matching)} match"
            )
    return reasons


def _unmet_constraints(spec: JobSpec, offer: Advertisement, provider: str) -> list[str]:
    rules = spec.constraints
    reasons = []
    if rules.regions and offer.region not in rules.regions:
        reasons.append(f"region: {offer.region} not in {', '.join(rules.regions)}")
    architecture = offer.hardware.architecture
    if rules.architectures and architecture not in rules.architectures:
        reasons.append(f"architecture: {architecture} not in {', '.join(rules.architectures)}")
    limit = rules.max_price_per_cpu_hour
    if limit is not None and offer.price_per_cpu_hour > limit:
        reasons.append(f"price: {offer.price_per_cpu_hour:g}/cpu-hour above max {limit:g}")
    if rules.providers and provider not in rules.providers:
        reasons.append("provider: not in the job's allowed provider list")
    return reasons


def max_charge(spec: JobSpec, price_per_cpu_hour: float) -> float:
    """The most a job can cost at this rate: cpu x timeout, billed per cpu-hour."""
    return round(price_per_cpu_hour * spec.resources.cpu * spec.timeout_s / 3600.0, 9)


def rank_bids(bids: list[tuple[str, Bid]]) -> list[tuple[str, Bid]]:
    """Cheapest first; ties broken by provider DID so the choice is deterministic."""
    return sorted(bids, key=lambda item: (item[1].price_per_cpu_hour, item[0]))
