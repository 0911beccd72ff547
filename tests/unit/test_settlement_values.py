"""Settlement values: units and splits, batch packing, bindings, receipts, the public API."""

from __future__ import annotations

from decimal import Decimal

import pytest
from eth_account import Account
from hypothesis import given
from hypothesis import strategies as st

import computemesh.settlement as settlement
from computemesh.identity import Identity
from computemesh.models.market import ContractTerms
from computemesh.settlement import (
    EscrowTerms,
    SettlementError,
    Split,
    bind_account,
    check_binding,
    credits_to_units,
    format_credits,
    verify_receipt,
)
from computemesh.settlement.batch import (
    MAX_BATCH,
    MAX_GAP,
    SKIP,
    BatchItem,
    plan_batches,
    unpack_amounts,
)
from computemesh.settlement.bindings import AccountBinding
from computemesh.settlement.receipts import issue_receipt


def test_public_api() -> None:
    assert set(settlement.__all__) >= {
        "Ledger",
        "SqliteLedger",
        "EvmLedger",
        "VerifiedResult",
        "Receipt",
        "EscrowTerms",
        "FraudRecord",
        "Split",
        "credits_to_units",
    }
    for name in settlement.__all__:
        assert hasattr(settlement, name), name


@pytest.mark.parametrize(
    ("credits", "units"),
    [
        (0.1, 100_000),
        (1, 1_000_000),
        ("12.5", 12_500_000),
        (0.0000005, 1),
        (Decimal("3"), 3 * 10**6),
    ],
)
def test_credits_to_units(credits: float | int | str | Decimal, units: int) -> None:
    assert credits_to_units(credits) == units


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "x", True])
def test_credits_to_units_refuses_non_amounts(bad: object) -> None:
    with pytest.raises(SettlementError) as info:
        credits_to_units(bad)  # type: ignore[arg-type]
    assert info.value.code == "bad_amount"


def test_format_credits() -> None:
    assert format_credits(12_500_000) == "12.500000"
    assert format_credits(-1) == "-0.000001"


@given(st.integers(min_value=0, max_value=2**40))
def test_split_shares_add_up_and_match_the_contract_formula(amount: int) -> None:
    shares = Split().shares(amount)
    assert shares.total == amount
    assert shares.treasury == amount * 1500 // 10000
    assert shares.creator == amount * 500 // 10000


def test_split_must_add_up() -> None:
    with pytest.raises(SettlementError):
        Split(provider_bps=9000, treasury_bps=1500, creator_bps=500)


def test_escrow_terms_from_contract_terms_use_units() -> None:
    consumer, provider = Identity.generate().did, Identity.generate().did
    terms = ContractTerms(
        contract_id="a" * 32,
        job_id="b" * 32,
        consumer=consumer,
        provider=provider,
        spec_sha256="c" * 64,
        price_per_cpu_hour=0.5,
        max_charge=0.3,
        created_at_ms=0,
    )
    assert EscrowTerms.from_contract(terms).amount == 300_000


def test_batches_pack_ranges_with_skips_and_split_on_limits() -> None:
    items = [BatchItem(i, 7, i % 2) for i in (3, 4, 6)]
    [call] = plan_batches(items)
    assert (call.first, call.count, call.payees) == (3, 4, [0, 1])
    assert unpack_amounts(call.first, call.count, call.entries) == {3: 7, 4: 7, 6: 7}
    far = plan_batches([BatchItem(0, 1, 1), BatchItem(MAX_GAP + 2, 1, 1)])
    assert len(far) == 2
    many = plan_batches([BatchItem(i, 1, 1) for i in range(MAX_BATCH + 1)])
    assert [c.count for c in many] == [MAX_BATCH, 1]
    with pytest.raises(ValueError):
        plan_batches([BatchItem(0, SKIP, 1)])
    with pytest.raises(ValueError):
        plan_batches([BatchItem(0, 1, 1), BatchItem(0, 2, 1)])


def test_account_binding_needs_both_signatures() -> None:
    identity, key = Identity.generate(), Account.create()
    binding = bind_account(identity, key)
    check_binding(binding)
    other = bind_account(identity, Account.create())
    swapped = AccountBinding(
        did=binding.did,
        address=binding.address,
        document=binding.document,
        address_signature=other.address_signature,
    )
    with pytest.raises(SettlementError) as info:
        check_binding(swapped)
    assert info.value.code == "bad_binding"
    stolen = AccountBinding.from_dict({**binding.to_dict(), "did": Identity.generate().did})
    with pytest.raises(SettlementError):
        check_binding(stolen)


def test_receipt_with_a_bad_signature_is_refused() -> None:
    author = Identity.generate()
    body = {"op": "deposit", "op_id": "deposit:x", "did": author.did, "amount": 5, "anchor": {}}
    receipt = issue_receipt(author, body)
    assert verify_receipt(receipt.to_dict(), issuer=author.did).amount == 5
    forged = receipt.to_dict()
    forged["body"] = {**forged["body"], "amount": 6}
    for document, issuer in ((forged, None), (receipt.to_dict(), Identity.generate().did)):
        with pytest.raises(SettlementError) as info:
            verify_receipt(document, issuer=issuer)
        assert info.value.code == "bad_receipt"
