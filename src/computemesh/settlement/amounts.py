"""Money as integers, and how a payment is split.

Every amount in the settlement layer is an ``int`` in **units**: millionths of a credit
(``UNITS_PER_CREDIT = 1_000_000``), the same scale as the payment token's 6 decimals on
chain. Floats never hold money here; the market models (``ContractTerms.max_charge``,
``price_per_cpu_hour``) carry credits as floats and enter through ``credits_to_units``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from computemesh.settlement.errors import SettlementError

UNITS_PER_CREDIT = 1_000_000
TOKEN_DECIMALS = 6
BPS = 10_000


def credits_to_units(credits: float | int | str | Decimal) -> int:
    """``credits`` as units, rounded half up to the nearest unit.

    A float goes through its shortest repr (``0.1`` is exactly 100000 units, not the binary
    fraction's expansion). Raises ``SettlementError`` (``bad_amount``) for a negative,
    infinite, NaN or non-numeric value.
    """
    if isinstance(credits, bool):
        raise SettlementError("an amount of credits is a number", code="bad_amount")
    try:
        value = Decimal(repr(credits)) if isinstance(credits, float) else Decimal(credits)
    except (InvalidOperation, ValueError) as exc:
        raise SettlementError(f"not an amount of credits: {credits!r}", code="bad_amount") from exc
    if not value.is_finite() or value < 0:
        raise SettlementError(f"not an amount of credits: {credits!r}", code="bad_amount")
    return int((value * UNITS_PER_CREDIT).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def units_to_credits(units: int) -> Decimal:
    """``units`` as an exact decimal number of credits (for display)."""
    return Decimal(units) / UNITS_PER_CREDIT


def format_credits(units: int) -> str:
    """``units`` as text with six decimals, e.g. ``12.500000``."""
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), UNITS_PER_CREDIT)
    return f"{sign}{whole}.{fraction:06d}"


def check_amount(amount: object, *, what: str = "amount", allow_zero: bool = False) -> int:
    """``amount`` if it is an ``int`` of units in range; ``SettlementError`` otherwise."""
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise SettlementError(f"{what} must be an integer number of units", code="bad_amount")
    if amount < 0 or (amount == 0 and not allow_zero):
        raise SettlementError(f"{what} must be positive, got {amount}", code="bad_amount")
    return amount


@dataclass(frozen=True)
class Shares:
    """One payment split three ways; the parts add up to the amount."""

    provider: int
    treasury: int
    creator: int

    @property
    def total(self) -> int:
        return self.provider + self.treasury + self.creator


@dataclass(frozen=True)
class Split:
    """A network's split of each released amount, in basis points (1/10000).

    Defaults: provider 80 %, treasury 15 %, model creator 5 %. The treasury and creator
    shares round down; the provider gets the remainder, so nothing is lost to rounding.
    The on-chain contract computes the same shares per released amount.
    """

    provider_bps: int = 8000
    treasury_bps: int = 1500
    creator_bps: int = 500

    def __post_init__(self) -> None:
        parts = (self.provider_bps, self.treasury_bps, self.creator_bps)
        if any(not isinstance(p, int) or p < 0 for p in parts) or sum(parts) != BPS:
            raise SettlementError(
                f"a split is three non-negative basis points adding up to {BPS}, got {parts}",
                code="bad_split",
            )

    def shares(self, amount: int) -> Shares:
        treasury = amount * self.treasury_bps // BPS
        creator = amount * self.creator_bps // BPS
        return Shares(provider=amount - treasury - creator, treasury=treasury, creator=creator)

    def to_dict(self) -> dict[str, int]:
        return {
            "provider_bps": self.provider_bps,
            "treasury_bps": self.treasury_bps,
            "creator_bps": self.creator_bps,
        }


def parse_split(text: str) -> Split:
    """``PROVIDER/TREASURY/CREATOR`` in percent (e.g. ``80/15/5``, ``70.5/25/4.5``) as a
    ``Split``. Raises ``SettlementError`` (``bad_split``) unless there are three
    non-negative parts, each a whole number of basis points, adding up to 100 %."""
    parts = text.split("/")
    if len(parts) != 3:
        raise SettlementError(
            f"a split is PROVIDER/TREASURY/CREATOR in percent, e.g. 80/15/5; got {text!r}",
            code="bad_split",
        )
    try:
        percents = [Decimal(part.strip()) for part in parts]
    except InvalidOperation as exc:
        raise SettlementError(
            f"a split's parts are numbers, got {text!r}", code="bad_split"
        ) from exc
    bps = [percent * BPS / 100 for percent in percents]
    if any(not b.is_finite() or b < 0 or b != b.to_integral_value() for b in bps):
        raise SettlementError(
            f"each part of a split is a non-negative percentage with at most two decimals,"
            f" got {text!r}",
            code="bad_split",
        )
    if sum(percents) != 100:
        raise SettlementError(
            f"a split's parts add up to 100 %, {text!r} adds up to {sum(percents)} %",
            code="bad_split",
        )
    provider, treasury, creator = (int(b) for b in bps)
    return Split(provider_bps=provider, treasury_bps=treasury, creator_bps=creator)
