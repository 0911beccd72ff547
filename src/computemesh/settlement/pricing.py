"""What a verified result costs: the charge from its signed usage and the contract's rate.

The formula, in units (a millionth of a credit)::

    charge = min(max_charge, round_half_up(price_per_cpu_hour x cpu_s / 3600 x 1_000_000))

- ``cpu_s`` is the CPU time the provider measured and signed into the result's
  ``ResourceUsage`` (user + system time of the sandboxed process tree, or of the wasm
  guest's thread), or into a checkpoint's (the same, up to that snapshot: what a dropped
  contract earns for verified progress, ``orchestrator.progress``);
- ``price_per_cpu_hour`` is the rate both parties signed in ``ContractTerms``;
- ``max_charge`` is the contract's cap (``price x cpu x timeout``, ``matching.max_charge``),
  which is also what the consumer locked in escrow, so a charge always fits the escrow.

The contract carries one rate, per CPU-hour: wall time, peak memory, wasm fuel and output
bytes are signed into the usage and bound by the spec's limits but not priced separately.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from computemesh.models.market import ContractTerms, ResourceUsage
from computemesh.settlement.amounts import UNITS_PER_CREDIT, credits_to_units

SECONDS_PER_HOUR = 3600


def charge_for_usage(usage: ResourceUsage, terms: ContractTerms) -> int:
    """The units a contract's provider earns for ``usage`` (formula in the module doc)."""
    rate = Decimal(repr(terms.price_per_cpu_hour))
    cpu_seconds = Decimal(repr(usage.cpu_s))
    exact = rate * cpu_seconds * UNITS_PER_CREDIT / SECONDS_PER_HOUR
    charge = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return min(charge, credits_to_units(terms.max_charge))
