"""What a job may cost at a provider's rates, and bids ranked by it.

``max_charge`` applies each rate (``models.market.Rates``) to the most of its quantity the
spec allows, the same terms ``settlement.pricing`` applies to the usage a run signs:

    compute = cpu x timeout_s / 3600 x price_per_cpu_hour
              (wasm: the larger of that and fuel_limit / 10^9 x price_per_billion_fuel,
              since a wasm result is priced by fuel and a wasm checkpoint by CPU time)
    memory  = memory_mb x 2^20 / 10^9 x timeout_s / 3600 x price_per_gb_hour
    output  = disk_mb x 2^20 / 10^9 x price_per_gb_out

The sum is the contract's cap and the escrow the consumer locks: no usage is charged more.
Output is bounded by the job's disk allowance, the limit on each file it writes.
"""

from __future__ import annotations

from computemesh.models.job import JobSpec
from computemesh.models.market import (
    BYTES_PER_GB,
    FUEL_PER_BILLION,
    RATE_FIELDS,
    SECONDS_PER_HOUR,
    Bid,
    ContractTerms,
    Rates,
)

MIB = 1024 * 1024


def max_charge(spec: JobSpec, rates: Rates) -> float:
    """The most ``spec`` can cost at ``rates``, in credits (formula in the module doc)."""
    hours = spec.timeout_s / SECONDS_PER_HOUR
    compute = rates.price_per_cpu_hour * spec.resources.cpu * hours
    fuel = spec.fuel_limit()
    if fuel is not None:
        compute = max(compute, rates.price_per_billion_fuel * fuel / FUEL_PER_BILLION)
    memory = rates.price_per_gb_hour * spec.resources.memory_mb * MIB / BYTES_PER_GB * hours
    output = rates.price_per_gb_out * spec.resources.disk_mb * MIB / BYTES_PER_GB
    return round(compute + memory + output, 9)


def rank_bids(spec: JobSpec, bids: list[tuple[str, Bid]]) -> list[tuple[str, Bid]]:
    """Cheapest for ``spec`` first (by ``max_charge`` at each bid's rates, then by CPU rate);
    ties broken by provider DID so the choice is deterministic."""
    return sorted(
        bids,
        key=lambda item: (max_charge(spec, item[1].rates), item[1].price_per_cpu_hour, item[0]),
    )


def underpriced_terms(terms: ContractTerms, spec: JobSpec, own: Rates) -> list[str]:
    """Why a provider charging ``own`` must not sign ``terms`` for ``spec``: each rate below
    its own, and a cap below ``max_charge`` at the terms' rates; empty when it may."""
    problems = [
        f"{name} {getattr(terms, name):g} is below this node's {getattr(own, name):g}"
        for name in RATE_FIELDS
        if getattr(terms, name) < getattr(own, name)
    ]
    cap = max_charge(spec, terms.rates)
    if terms.max_charge < cap:
        problems.append(f"max_charge {terms.max_charge:g} is below {cap:g} at these rates")
    return problems
