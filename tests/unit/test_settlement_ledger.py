"""The Ledger contract, run against the embedded SQLite ledger and the EVM ledger on anvil."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from computemesh.identity import Identity
from computemesh.settlement import (
    EscrowTerms,
    Ledger,
    LedgerSettings,
    SettlementError,
    SqliteLedger,
    VerifiedResult,
    attest_result,
    bind_account,
    record_fraud,
)
from computemesh.settlement.anvil import AnvilNode, find_anvil, start_anvil, stop_anvil
from computemesh.settlement.chain import deploy_settlement
from computemesh.settlement.evm import EvmLedger
from computemesh.settlement.transactions import ChainClient

pytestmark = pytest.mark.timeout(120)

CREDIT = 1_000_000
ROLES = ("consumer", "provider", "creator", "treasury", "arbiter", "verifier", "stranger")


@dataclass
class World:
    """A ledger and the participants of one network."""

    ledger: Ledger
    ids: dict[str, Identity]

    def did(self, role: str) -> str:
        return self.ids[role].did

    def fund(self, role: str, amount: int) -> None:
        self.ledger.deposit(self.did(role), amount, deposit_id=f"fund-{role}-{os.urandom(4).hex()}")

    def terms(self, amount: int, *, creator: bool = True) -> EscrowTerms:
        return EscrowTerms(
            contract_id=os.urandom(16).hex(),
            job_id=os.urandom(16).hex(),
            consumer=self.did("consumer"),
            provider=self.did("provider"),
            amount=amount,
            creator=self.did("creator") if creator else None,
        )

    def verified(
        self, contract_id: str, amount: int, *, final: bool = True, by: str = "consumer"
    ) -> VerifiedResult:
        return attest_result(
            self.ids[by],
            contract_id=contract_id,
            result_id=hashlib.sha256(os.urandom(16)).hexdigest(),
            amount=amount,
            final=final,
        )

    def total(self) -> int:
        """Everything the participants hold: available, escrowed and staked."""
        total = 0
        for role in ROLES:
            balance = self.ledger.balance(self.did(role))
            total += balance.available + balance.escrowed + balance.staked
        return total


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilNode]:
    if find_anvil() is None:
        pytest.fail("anvil is not installed: run `make setup`")
    node = start_anvil()
    try:
        yield node
    finally:
        stop_anvil(node)


def _funded_key(w3: Web3) -> LocalAccount:
    key: LocalAccount = Account.create()
    w3.provider.make_request("anvil_setBalance", [key.address, hex(10**20)])  # type: ignore[arg-type]
    return key


def _settings(ids: dict[str, Identity]) -> LedgerSettings:
    return LedgerSettings(
        treasury=ids["treasury"].did,
        arbiters=frozenset({ids["arbiter"].did}),
        verifiers=frozenset({ids["verifier"].did}),
    )


def _sqlite_world(tmp_path: Path, ids: dict[str, Identity]) -> Ledger:
    return SqliteLedger.open(tmp_path / "ledger.db", Identity.generate(), _settings(ids))


def _evm_world(node: AnvilNode, ids: dict[str, Identity]) -> Ledger:
    w3 = Web3(Web3.HTTPProvider(node.url))
    keys = {role: _funded_key(w3) for role in ROLES}
    operator = _funded_key(w3)
    deployment = deploy_settlement(
        w3,
        operator,
        treasury=keys["treasury"].address,
        arbiter=keys["arbiter"].address,
        test_network=True,
    )
    client = ChainClient(w3, deployment, list(keys.values()), operator=operator)
    mint = client.token.functions.mint(operator.address, 10**15)
    client.send(mint, operator, "mint")
    ledger = EvmLedger(client, author=Identity.generate(), settings=_settings(ids))
    for role in ROLES:
        ledger.bind_account(bind_account(ids[role], keys[role]))
    return ledger


@pytest.fixture(params=["sqlite", pytest.param("evm", marks=pytest.mark.integration)])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> World:
    ids = {role: Identity.generate() for role in ROLES}
    if request.param == "sqlite":
        ledger = _sqlite_world(tmp_path, ids)
        for role in ROLES:
            ledger.bind_account(bind_account(ids[role], Account.create()))
    else:
        ledger = _evm_world(request.getfixturevalue("anvil"), ids)
    return World(ledger, ids)


def expect_refusal(code: str, action: Callable[[], object]) -> None:
    with pytest.raises(SettlementError) as info:
        action()
    assert info.value.code == code, info.value


# accounts and deposits --------------------------------------------------------------------


def test_deposit_credits_the_account_once_per_id(world: World) -> None:
    did = world.did("consumer")
    first = world.ledger.deposit(did, 5 * CREDIT, deposit_id="dep-1")
    again = world.ledger.deposit(did, 5 * CREDIT, deposit_id="dep-1")
    assert again.to_dict() == first.to_dict()
    assert world.ledger.balance(did).available == 5 * CREDIT
    expect_refusal(
        "conflicting_retry", lambda: world.ledger.deposit(did, 6 * CREDIT, deposit_id="dep-1")
    )
    assert world.ledger.balance(did).available == 5 * CREDIT


def test_both_backends_implement_the_port(world: World) -> None:
    assert isinstance(world.ledger, Ledger)
    assert world.ledger.split.to_dict() == {
        "provider_bps": 8000,
        "treasury_bps": 1500,
        "creator_bps": 500,
    }


def test_unknown_account_has_zero_balances(world: World) -> None:
    balance = world.ledger.balance(Identity.generate().did)
    assert (balance.available, balance.escrowed, balance.staked) == (0, 0, 0)


# escrow -----------------------------------------------------------------------------------


def test_lock_moves_available_into_escrow_and_is_idempotent(world: World) -> None:
    world.fund("consumer", 10 * CREDIT)
    terms = world.terms(4 * CREDIT)
    first = world.ledger.lock(terms)
    assert world.ledger.lock(terms).to_dict() == first.to_dict()
    balance = world.ledger.balance(world.did("consumer"))
    assert (balance.available, balance.escrowed) == (6 * CREDIT, 4 * CREDIT)
    escrow = world.ledger.escrow(terms.contract_id)
    assert (escrow.locked, escrow.remaining, escrow.closed) == (4 * CREDIT, 4 * CREDIT, False)


def test_lock_beyond_the_available_balance_is_refused(world: World) -> None:
    world.fund("consumer", 1 * CREDIT)
    expect_refusal("insufficient_funds", lambda: world.ledger.lock(world.terms(2 * CREDIT)))
    assert world.ledger.balance(world.did("consumer")).available == 1 * CREDIT


def test_final_release_splits_the_payment_and_refunds_the_rest(world: World) -> None:
    world.fund("consumer", 10 * CREDIT)
    terms = world.terms(4 * CREDIT)
    world.ledger.lock(terms)
    receipt = world.ledger.release(world.verified(terms.contract_id, 3 * CREDIT))
    assert receipt.shares == {"provider": 2_400_000, "treasury": 450_000, "creator": 150_000}
    assert receipt.refund == 1 * CREDIT
    assert world.ledger.balance(world.did("provider")).available == 2_400_000
    assert world.ledger.balance(world.did("treasury")).available == 450_000
    assert world.ledger.balance(world.did("creator")).available == 150_000
    consumer = world.ledger.balance(world.did("consumer"))
    assert (consumer.available, consumer.escrowed) == (7 * CREDIT, 0)
    escrow = world.ledger.escrow(terms.contract_id)
    assert (escrow.released, escrow.refunded, escrow.closed) == (3 * CREDIT, 1 * CREDIT, True)
    assert world.total() == 10 * CREDIT


def test_without_a_creator_the_creator_share_goes_to_the_treasury(world: World) -> None:
    world.fund("consumer", 2 * CREDIT)
    terms = world.terms(1 * CREDIT, creator=False)
    world.ledger.lock(terms)
    world.ledger.release(world.verified(terms.contract_id, 1 * CREDIT))
    assert world.ledger.balance(world.did("treasury")).available == 200_000
    assert world.ledger.balance(world.did("creator")).available == 0


def test_releasing_the_same_result_twice_pays_once(world: World) -> None:
    world.fund("consumer", 10 * CREDIT)
    terms = world.terms(4 * CREDIT)
    world.ledger.lock(terms)
    result = world.verified(terms.contract_id, 1 * CREDIT, final=False)
    first = world.ledger.release(result)
    assert world.ledger.release(result).to_dict() == first.to_dict()
    assert world.ledger.release_many([result])[0].to_dict() == first.to_dict()
    assert world.ledger.balance(world.did("provider")).available == 800_000
    assert world.ledger.escrow(terms.contract_id).remaining == 3 * CREDIT


def test_a_result_id_reused_with_other_content_is_refused(world: World) -> None:
    world.fund("consumer", 10 * CREDIT)
    terms = world.terms(4 * CREDIT)
    world.ledger.lock(terms)
    result = world.verified(terms.contract_id, 1 * CREDIT, final=False)
    world.ledger.release(result)
    other = attest_result(
        world.ids["consumer"],
        contract_id=terms.contract_id,
        result_id=result.result_id,
        amount=2 * CREDIT,
        final=False,
    )
    expect_refusal("conflicting_retry", lambda: world.ledger.release(other))
    assert world.ledger.escrow(terms.contract_id).remaining == 3 * CREDIT


def test_release_after_the_final_one_is_refused(world: World) -> None:
    world.fund("consumer", 10 * CREDIT)
    terms = world.terms(4 * CREDIT)
    world.ledger.lock(terms)
    world.ledger.release(world.verified(terms.contract_id, 1 * CREDIT))
    expect_refusal(
        "escrow_closed", lambda: world.ledger.release(world.verified(terms.contract_id, 1))
    )
    expect_refusal("escrow_closed", lambda: world.ledger.refund(terms.contract_id))


def test_spending_more_than_the_escrow_is_refused(world: World) -> None:
    world.fund("consumer", 10 * CREDIT)
    terms = world.terms(2 * CREDIT)
    world.ledger.lock(terms)
    too_much = world.verified(terms.contract_id, 2 * CREDIT + 1)
    expect_refusal("exceeds_escrow", lambda: world.ledger.release(too_much))
    expect_refusal("exceeds_escrow", lambda: world.ledger.release_many([too_much]))
    assert world.ledger.escrow(terms.contract_id).remaining == 2 * CREDIT
    assert world.ledger.balance(world.did("provider")).available == 0


def test_release_without_a_valid_verification_is_refused(world: World) -> None:
    world.fund("consumer", 10 * CREDIT)
    terms = world.terms(2 * CREDIT)
    world.ledger.lock(terms)
    by_stranger = world.verified(terms.contract_id, 1 * CREDIT, by="stranger")
    expect_refusal("unverified_result", lambda: world.ledger.release(by_stranger))
    honest = world.verified(terms.contract_id, 1 * CREDIT)
    forged = VerifiedResult(
        contract_id=honest.contract_id,
        result_id=honest.result_id,
        amount=2 * CREDIT,
        final=True,
        attestation=honest.attestation,
    )
    expect_refusal("unverified_result", lambda: world.ledger.release(forged))
    expect_refusal("unverified_result", lambda: world.ledger.release_many([forged]))
    assert world.ledger.escrow(terms.contract_id).remaining == 2 * CREDIT


def test_a_trusted_verifier_may_attest_any_contract(world: World) -> None:
    world.fund("consumer", 10 * CREDIT)
    terms = world.terms(2 * CREDIT)
    world.ledger.lock(terms)
    world.ledger.release(world.verified(terms.contract_id, 1 * CREDIT, by="verifier"))
    assert world.ledger.escrow(terms.contract_id).closed


def test_release_on_an_unknown_contract_is_refused(world: World) -> None:
    result = world.verified(os.urandom(16).hex(), 1)
    expect_refusal("unknown_escrow", lambda: world.ledger.release(result))


def test_a_job_failing_midway_pays_verified_checkpoints_and_refunds_the_rest(
    world: World,
) -> None:
    world.fund("consumer", 10 * CREDIT)
    terms = world.terms(5 * CREDIT)
    world.ledger.lock(terms)
    for _ in range(2):
        world.ledger.release(world.verified(terms.contract_id, 1 * CREDIT, final=False))
    refund = world.ledger.refund(terms.contract_id)
    assert refund.refund == 3 * CREDIT
    assert world.ledger.refund(terms.contract_id).to_dict() == refund.to_dict()
    escrow = world.ledger.escrow(terms.contract_id)
    assert (escrow.released, escrow.refunded, escrow.closed) == (2 * CREDIT, 3 * CREDIT, True)
    assert world.ledger.balance(world.did("consumer")).available == 8 * CREDIT
    assert world.ledger.balance(world.did("provider")).available == 1_600_000
    assert world.total() == 10 * CREDIT


def test_release_many_settles_many_contracts_and_retries_pay_once(world: World) -> None:
    world.fund("consumer", 50 * CREDIT)
    contracts = [world.terms(2 * CREDIT) for _ in range(12)]
    for terms in contracts:
        world.ledger.lock(terms)
    checkpoint = world.verified(contracts[0].contract_id, 1 * CREDIT, final=False)
    world.ledger.release(checkpoint)
    results = [world.verified(t.contract_id, 1 * CREDIT) for t in contracts[1:]]
    results.append(world.verified(contracts[0].contract_id, 500_000))
    receipts = world.ledger.release_many(results)
    assert [r.body["result_id"] for r in receipts] == [r.result_id for r in results]
    assert receipts[-1].refund == 500_000
    assert all(r.refund == 1 * CREDIT for r in receipts[:-1])
    again = world.ledger.release_many(results)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in receipts]
    provider_paid = world.ledger.balance(world.did("provider")).available
    assert provider_paid == 800_000 * 12 + 400_000
    assert all(world.ledger.escrow(t.contract_id).closed for t in contracts)
    assert world.total() == 50 * CREDIT


def test_one_refused_result_stops_the_batch_before_it_pays(world: World) -> None:
    world.fund("consumer", 10 * CREDIT)
    good, bad = world.terms(1 * CREDIT), world.terms(1 * CREDIT)
    world.ledger.lock(good)
    world.ledger.lock(bad)
    results = [
        world.verified(good.contract_id, 1 * CREDIT),
        world.verified(bad.contract_id, 2 * CREDIT),
    ]
    expect_refusal("exceeds_escrow", lambda: world.ledger.release_many(results))
    assert world.ledger.balance(world.did("provider")).available == 0
    assert not world.ledger.escrow(good.contract_id).closed


# stake and slashing -----------------------------------------------------------------------


def test_stake_and_slash_with_a_fraud_record(world: World) -> None:
    world.fund("provider", 10 * CREDIT)
    world.ledger.stake(world.did("provider"), 6 * CREDIT, stake_id="stake-1")
    world.ledger.stake(world.did("provider"), 6 * CREDIT, stake_id="stake-1")
    provider = world.ledger.balance(world.did("provider"))
    assert (provider.available, provider.staked) == (4 * CREDIT, 6 * CREDIT)
    fraud = record_fraud(
        world.ids["arbiter"],
        fraud_id="fraud-1",
        provider=world.did("provider"),
        contract_id=os.urandom(16).hex(),
        evidence=[hashlib.sha256(b"result a").hexdigest(), hashlib.sha256(b"b").hexdigest()],
        amount=2 * CREDIT,
    )
    first = world.ledger.slash(fraud)
    assert world.ledger.slash(fraud).to_dict() == first.to_dict()
    assert world.ledger.balance(world.did("provider")).staked == 4 * CREDIT
    assert world.ledger.balance(world.did("treasury")).available == 2 * CREDIT
    assert world.total() == 10 * CREDIT


def test_slash_without_an_arbiters_record_or_beyond_the_stake_is_refused(world: World) -> None:
    world.fund("provider", 10 * CREDIT)
    world.ledger.stake(world.did("provider"), 1 * CREDIT, stake_id="stake-2")
    evidence = [hashlib.sha256(b"x").hexdigest()]

    def fraud(by: str, amount: int) -> object:
        return world.ledger.slash(
            record_fraud(
                world.ids[by],
                fraud_id=f"fraud-{by}-{amount}",
                provider=world.did("provider"),
                contract_id="0" * 32,
                evidence=evidence,
                amount=amount,
            )
        )

    expect_refusal("no_fraud_record", lambda: fraud("stranger", 1))
    expect_refusal("exceeds_stake", lambda: fraud("arbiter", 2 * CREDIT))
    assert world.ledger.balance(world.did("provider")).staked == 1 * CREDIT


def test_staking_more_than_available_is_refused(world: World) -> None:
    world.fund("provider", 1 * CREDIT)
    expect_refusal(
        "insufficient_funds",
        lambda: world.ledger.stake(world.did("provider"), 2 * CREDIT, stake_id="stake-3"),
    )


# receipts ---------------------------------------------------------------------------------


def test_receipts_are_signed_checked_and_listed_in_history(world: World) -> None:
    world.fund("consumer", 3 * CREDIT)
    terms = world.terms(2 * CREDIT)
    lock = world.ledger.lock(terms)
    release = world.ledger.release(world.verified(terms.contract_id, 1 * CREDIT))
    assert world.ledger.check_receipt(release.to_dict()).op_id == release.op_id
    tampered = release.to_dict()
    tampered["body"] = {**tampered["body"], "amount": 2 * CREDIT}
    expect_refusal("bad_receipt", lambda: world.ledger.check_receipt(tampered))
    ops = [r.op for r in world.ledger.history(world.did("consumer"))]
    assert ops[-2:] == ["lock", "release"]
    assert lock.op_id in [r.op_id for r in world.ledger.history(world.did("provider"))]
