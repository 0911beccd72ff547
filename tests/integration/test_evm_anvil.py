"""The EVM ledger against a real anvil: reverts, operators, restarts, gas from receipts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractLogicError

from computemesh.identity import Identity, sign_document
from computemesh.settlement import (
    ChainError,
    EscrowTerms,
    EvmLedger,
    LedgerSettings,
    Receipt,
    ReceiptStore,
    SettlementError,
    VerifiedResult,
    attest_result,
    bind_account,
    chain_settings,
    connect,
    deploy_settlement,
)
from computemesh.settlement.anvil import AnvilNode, start_anvil, stop_anvil
from computemesh.settlement.chain import Deployment
from computemesh.settlement.transactions import ChainClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CREDIT = 1_000_000


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilNode]:
    node = start_anvil()
    try:
        yield node
    finally:
        stop_anvil(node)


def funded(w3: Web3) -> LocalAccount:
    key: LocalAccount = Account.create()
    w3.provider.make_request("anvil_setBalance", [key.address, hex(10**20)])  # type: ignore[arg-type]
    return key


@dataclass
class Chain:
    w3: Web3
    deployment: Deployment
    operator: LocalAccount
    consumer: LocalAccount
    provider: LocalAccount
    ids: dict[str, Identity]
    settings: LedgerSettings

    def ledger(self, keys: list[LocalAccount], store: ReceiptStore | None = None) -> EvmLedger:
        client = ChainClient(self.w3, self.deployment, keys, operator=self.operator)
        return EvmLedger(client, author=self.ids["author"], settings=self.settings, store=store)

    def terms(self, amount: int) -> EscrowTerms:
        return EscrowTerms(
            contract_id=os.urandom(16).hex(),
            job_id=os.urandom(16).hex(),
            consumer=self.ids["consumer"].did,
            provider=self.ids["provider"].did,
            amount=amount,
        )


@pytest.fixture
def chain(anvil: AnvilNode) -> Chain:
    w3 = connect(chain_settings("local", anvil.url))
    operator, consumer, provider = funded(w3), funded(w3), funded(w3)
    treasury = funded(w3)
    deployment = deploy_settlement(
        w3, operator, treasury=treasury.address, arbiter=operator.address, test_network=True
    )
    ids = {role: Identity.generate() for role in ("consumer", "provider", "treasury", "author")}
    settings = LedgerSettings(treasury=ids["treasury"].did)
    result = Chain(w3, deployment, operator, consumer, provider, ids, settings)
    ledger = result.ledger([consumer, provider, treasury])
    ledger.client.send(
        ledger.client.token.functions.mint(operator.address, 10**12), operator, "mint"
    )
    for role, key in (("consumer", consumer), ("provider", provider), ("treasury", treasury)):
        ledger.bind_account(bind_account(ids[role], key))
    ledger.deposit(ids["consumer"].did, 100 * CREDIT, deposit_id="seed")
    return result


def test_connect_refuses_an_endpoint_of_another_chain(anvil: AnvilNode) -> None:
    with pytest.raises(ChainError) as info:
        connect(chain_settings("base", anvil.url))
    assert info.value.code == "wrong_chain"


def test_a_revert_from_anvil_is_a_contract_logic_error_mapped_to_a_code(chain: Chain) -> None:
    ledger = chain.ledger([chain.consumer])
    settlement = ledger.client.settlement
    with pytest.raises(ContractLogicError, match="not authorized"):
        settlement.functions.refund(chain.consumer.address, 0).call(
            {"from": chain.provider.address}
        )
    release = settlement.functions.release(chain.consumer.address, 0, bytes(32), 1, True)
    with pytest.raises(ChainError) as info:
        ledger.client.send(release, chain.consumer, "release")
    assert info.value.code == "unverified_result"
    assert "no verified result" in str(info.value.revert)


def test_an_approved_operator_acts_for_an_account_whose_key_it_lacks(chain: Chain) -> None:
    without_keys = chain.ledger([])
    terms = chain.terms(2 * CREDIT)
    with pytest.raises(SettlementError) as info:
        without_keys.lock(terms)
    assert info.value.code == "not_authorized"
    approve = without_keys.client.settlement.functions.set_operator(chain.operator.address, True)
    without_keys.client.send(approve, chain.consumer, "set_operator")
    without_keys.lock(terms)
    assert without_keys.balance(chain.ids["consumer"].did).escrowed == 2 * CREDIT


def test_a_restarted_client_replays_from_the_chain_and_pays_once(chain: Chain) -> None:
    first = chain.ledger([chain.consumer])
    single, batched = chain.terms(2 * CREDIT), chain.terms(2 * CREDIT)
    first.lock(single)
    first.lock(batched)
    consumer = chain.ids["consumer"]
    one = attest_result(
        consumer, contract_id=single.contract_id, result_id="11" * 32, amount=CREDIT
    )
    many = attest_result(
        consumer, contract_id=batched.contract_id, result_id="22" * 32, amount=CREDIT // 2
    )
    receipts = [first.release(one), *first.release_many([many])]
    restarted = chain.ledger([chain.consumer], store=ReceiptStore())
    again = [restarted.release(one), *restarted.release_many([many])]
    assert [r.body["refund"] for r in again] == [r.body["refund"] for r in receipts]
    assert [r.anchor["tx"] for r in again] == [r.anchor["tx"] for r in receipts]
    assert restarted.balance(chain.ids["provider"].did).available == 800_000 + 400_000
    escrow = restarted.escrow(batched.contract_id)
    assert (escrow.released, escrow.refunded, escrow.closed) == (CREDIT // 2, 1_500_000, True)
    other = attest_result(consumer, contract_id=batched.contract_id, result_id="33" * 32, amount=1)
    with pytest.raises(SettlementError) as info:
        restarted.release_many([other])
    assert info.value.code == "escrow_closed"


def test_a_batch_costs_far_less_gas_per_job_than_one_transaction_each(chain: Chain) -> None:
    ledger = chain.ledger([chain.consumer])
    contracts = [chain.terms(CREDIT) for _ in range(41)]
    for terms in contracts:
        ledger.lock(terms)
    consumer = chain.ids["consumer"]

    def verified(terms: EscrowTerms) -> VerifiedResult:
        digest = hashlib.sha256(terms.contract_id.encode()).hexdigest()
        return attest_result(consumer, contract_id=terms.contract_id, result_id=digest, amount=5)

    single = ledger.release(verified(contracts[0]))
    batch = ledger.release_many([verified(t) for t in contracts[1:]])
    assert len({r.anchor["tx"] for r in batch}) == 1
    gas_single = chain.w3.eth.get_transaction_receipt(single.anchor["tx"])["gasUsed"]
    gas_batch = chain.w3.eth.get_transaction_receipt(batch[0].anchor["tx"])["gasUsed"]
    assert gas_single > 21_000
    assert gas_batch / 40 < gas_single / 5
    assert ledger.check_receipt(batch[7].to_dict()).op_id == batch[7].op_id


def _settled_receipts(chain: Chain, ledger: EvmLedger) -> list[Receipt]:
    """One receipt of each kind the chain client issues, all on chain."""
    consumer, provider = chain.ids["consumer"], chain.ids["provider"]
    single, batched, refunded = chain.terms(CREDIT), chain.terms(CREDIT), chain.terms(CREDIT)
    receipts = [ledger.deposit(consumer.did, 5 * CREDIT, deposit_id="more")]
    receipts += [ledger.lock(terms) for terms in (single, batched, refunded)]
    one = attest_result(consumer, contract_id=single.contract_id, result_id="44" * 32, amount=7)
    many = attest_result(consumer, contract_id=batched.contract_id, result_id="55" * 32, amount=9)
    receipts += [ledger.release(one), *ledger.release_many([many])]
    receipts += [ledger.refund(refunded.contract_id)]
    ledger.deposit(provider.did, 2 * CREDIT, deposit_id="provider-funds")
    receipts += [ledger.stake(provider.did, CREDIT, stake_id="provider-stake")]
    return receipts


def test_every_kind_of_receipt_checks_against_the_chain_after_a_restart(chain: Chain) -> None:
    ledger = chain.ledger([chain.consumer, chain.provider])
    receipts = _settled_receipts(chain, ledger)
    restarted = chain.ledger([], store=ReceiptStore())
    for receipt in receipts:
        assert restarted.check_receipt(receipt.to_dict()).op_id == receipt.op_id


def test_a_receipt_signed_by_another_key_is_refused(chain: Chain) -> None:
    ledger = chain.ledger([chain.consumer])
    receipt = ledger.deposit(chain.ids["consumer"].did, CREDIT, deposit_id="forged")
    forged = sign_document(Identity.generate(), "settlement-receipt", receipt.body)
    with pytest.raises(SettlementError) as info:
        chain.ledger([], store=ReceiptStore()).check_receipt(forged)
    assert info.value.code == "bad_receipt"
    assert "signer" in info.value.message or "signed" in info.value.message


def _re_signed(chain: Chain, receipt: Receipt, **changes: object) -> dict[str, object]:
    """``receipt`` with ``changes`` to its body, signed again by the settlement authority."""
    return sign_document(chain.ids["author"], "settlement-receipt", {**receipt.body, **changes})


def test_a_receipt_whose_amounts_differ_from_the_chain_is_refused(chain: Chain) -> None:
    ledger = chain.ledger([chain.consumer, chain.provider])
    deposit, lock_single, lock_batched, _, release, batched, refund, stake = _settled_receipts(
        chain, ledger
    )
    shares = {"provider": 800, "treasury": 150, "creator": 50}
    lies = [
        _re_signed(chain, deposit, amount=deposit.amount + 1),
        _re_signed(chain, lock_single, amount=lock_single.amount * 2),
        _re_signed(chain, lock_batched, payees={"provider": chain.ids["treasury"].did}),
        _re_signed(chain, release, amount=1000, shares=shares),
        _re_signed(chain, release, refund=release.refund + 1),
        _re_signed(chain, batched, refund=0),
        _re_signed(chain, batched, anchor=dict(release.anchor)),
        _re_signed(chain, refund, refund=refund.refund - 1),
        _re_signed(chain, stake, did=chain.ids["consumer"].did),
    ]
    restarted = chain.ledger([], store=ReceiptStore())
    for lie in lies:
        with pytest.raises(SettlementError) as info:
            restarted.check_receipt(lie)
        assert info.value.code == "bad_receipt", lie["body"]
