"""What a verified result costs: the charge from its signed usage and the contract's rates.

The formula, in units (a millionth of a credit)::

    compute = fuel x price_per_billion_fuel / 10^9        when the usage counts fuel (wasm)
            = cpu_s x price_per_cpu_hour / 3600            otherwise
    memory  = peak_bytes / 10^9 x wall_s / 3600 x price_per_gb_hour
    output  = bytes_out / 10^9 x price_per_gb_out
    charge  = min(max_charge, round_half_up((compute + memory + output) x 1_000_000))

- the quantities are the ones the provider measured and signed into the result's
  ``ResourceUsage`` (``cpu_s``: user + system time of the sandboxed process tree or of the
  wasm guest's thread; ``peak_bytes``: ``max_rss_kb`` x 1024; ``bytes_out``: stdout, stderr,
  output files and checkpoint archives), or into a checkpoint's (the same, up to that
  snapshot: what a dropped contract earns for verified progress, ``orchestrator.progress``);
- a wasm result is priced by its fuel, which is exact and the same on every host, so
  replicas that agree (``verification.compare`` checks their fuel) cost the same whatever
  CPU time each host spent. A wasm checkpoint is taken while the guest runs, when wasmtime
  cannot report fuel: it carries none, and is priced by its CPU time;
- the rates are the ones both parties signed in ``ContractTerms`` (``models.market.Rates``:
  finite, non-negative, at most ``MAX_RATE``);
- ``max_charge`` is the contract's cap (``matching.max_charge``: the same rates applied to
  the spec's limits), which is also what the consumer locked in escrow, so a charge always
  fits the escrow.

Only the memory term depends on wall time, which differs between hosts; nodes leave its
rate at 0 unless they price memory apart from CPU.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from computemesh.models.market import (
    BYTES_PER_GB,
    FUEL_PER_BILLION,
    SECONDS_PER_HOUR,
    ContractTerms,
    Rates,
    ResourceUsage,
)
from computemesh.settlement.amounts import UNITS_PER_CREDIT, credits_to_units


def charge_for_usage(usage: ResourceUsage, terms: ContractTerms) -> int:
    """The units a contract's provider earns for ``usage`` (formula in the module doc)."""
    exact = usage_cost(usage, terms.rates) * UNITS_PER_CREDIT
    charge = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return min(charge, credits_to_units(terms.max_charge))


def usage_cost(usage: ResourceUsage, rates: Rates) -> Decimal:
    """The exact credits ``usage`` costs at ``rates``, before rounding and the cap."""
    return compute_cost(usage, rates) + memory_cost(usage, rates) + output_cost(usage, rates)


def compute_cost(usage: ResourceUsage, rates: Rates) -> Decimal:
    """Fuel at the fuel rate when the usage counts fuel, else CPU time at the CPU rate."""
    if usage.fuel is not None:
        return _exact(rates.price_per_billion_fuel) * usage.fuel / FUEL_PER_BILLION
    return _exact(rates.price_per_cpu_hour) * _exact(usage.cpu_s) / SECONDS_PER_HOUR


def memory_cost(usage: ResourceUsage, rates: Rates) -> Decimal:
    gigabytes = Decimal(usage.max_rss_kb * 1024) / BYTES_PER_GB
    hours = _exact(usage.wall_s) / SECONDS_PER_HOUR
    return _exact(rates.price_per_gb_hour) * gigabytes * hours


def output_cost(usage: ResourceUsage, rates: Rates) -> Decimal:
    return _exact(rates.price_per_gb_out) * usage.bytes_out / BYTES_PER_GB


def _exact(value: float) -> Decimal:
    """A float by its shortest repr: 0.1 is one tenth, not the binary fraction."""
    return Decimal(repr(value))
