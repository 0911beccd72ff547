"""Pricing from signed usage, and the provider's escrow check before it countersigns."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from computemesh.identity import Identity
from computemesh.models.market import ContractTerms, ResourceUsage
from computemesh.settlement import (
    EscrowTerms,
    LedgerSettings,
    SettlementError,
    SqliteLedger,
    credits_to_units,
)
from computemesh.settlement.escrow_checks import require_escrow
from computemesh.settlement.pricing import charge_for_usage

CONSUMER, PROVIDER, TREASURY = (Identity.generate() for _ in range(3))


def terms(price: float = 0.1, max_charge: float = 0.01, contract: str = "a" * 32) -> ContractTerms:
    return ContractTerms(
        contract_id=contract,
        job_id="b" * 32,
        consumer=CONSUMER.did,
        provider=PROVIDER.did,
        spec_sha256="c" * 64,
        price_per_cpu_hour=price,
        max_charge=max_charge,
        created_at_ms=0,
    )


def usage(cpu_s: float, wall_s: float = 1.0) -> ResourceUsage:
    return ResourceUsage(wall_s=wall_s, cpu_s=cpu_s, max_rss_kb=1024)


@pytest.mark.parametrize(
    ("price", "cpu_s", "units"),
    [
        (0.1, 36.0, 1000),  # 0.1 credit/h x 0.01 h
        (1.0, 3600.0, 1_000_000),
        (0.12, 1.5, 50),  # 0.12 x 1.5 / 3600 credits = 50 units exactly
        (0.1, 0.0179, 0),  # 0.497 units round down
        (0.1, 0.018, 1),  # 0.5 units round half up
        (0.0, 1000.0, 0),
    ],
)
def test_charge_is_rate_times_cpu_hours_in_units(price: float, cpu_s: float, units: int) -> None:
    assert charge_for_usage(usage(cpu_s), terms(price=price, max_charge=100.0)) == units


def test_charge_is_capped_at_max_charge() -> None:
    assert charge_for_usage(usage(3600.0), terms(price=1.0, max_charge=0.25)) == 250_000


def test_wall_time_is_not_priced() -> None:
    contract = terms(max_charge=100.0)
    assert charge_for_usage(usage(36.0, wall_s=1.0), contract) == charge_for_usage(
        usage(36.0, wall_s=5000.0), contract
    )


@given(
    price=st.floats(min_value=0, max_value=1000, allow_nan=False),
    cpu_s=st.floats(min_value=0, max_value=10**6, allow_nan=False),
    cap=st.floats(min_value=0, max_value=10**4, allow_nan=False),
)
def test_charge_never_exceeds_the_escrow(price: float, cpu_s: float, cap: float) -> None:
    charge = charge_for_usage(usage(cpu_s), terms(price=price, max_charge=cap))
    assert 0 <= charge <= credits_to_units(cap)


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    opened = SqliteLedger.open(
        tmp_path / "ledger.db", CONSUMER, LedgerSettings(treasury=TREASURY.did)
    )
    opened.deposit(CONSUMER.did, credits_to_units(1), deposit_id="funds")
    return opened


def test_escrow_covering_the_contract_passes(ledger: SqliteLedger) -> None:
    contract = terms()
    ledger.lock(EscrowTerms.from_contract(contract))
    assert require_escrow(ledger, contract).remaining == 10_000


@pytest.mark.parametrize(
    ("locked", "code"),
    [
        (None, "no_escrow"),
        ("short", "escrow_short"),
        ("other provider", "escrow_mismatch"),
        ("refunded", "escrow_closed"),
    ],
)
def test_escrow_that_does_not_cover_the_contract_is_refused(
    ledger: SqliteLedger, locked: str | None, code: str
) -> None:
    contract = terms()
    escrow = EscrowTerms.from_contract(contract)
    if locked == "short":
        escrow = EscrowTerms.from_contract(terms(max_charge=0.005))
    elif locked == "other provider":
        escrow = EscrowTerms.from_contract(
            contract.model_copy(update={"provider": Identity.generate().did})
        )
    if locked is not None:
        ledger.lock(escrow)
    if locked == "refunded":
        ledger.refund(contract.contract_id)
    with pytest.raises(SettlementError) as refused:
        require_escrow(ledger, contract)
    assert refused.value.code == code
