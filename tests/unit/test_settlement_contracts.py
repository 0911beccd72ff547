"""Unit tests of the Vyper contracts under titanoboa (in-process EVM, no chain needed)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boa
import pytest

from computemesh.settlement.batch import SKIP, BatchItem, pack_entries, plan_batches
from computemesh.settlement.chain import CONTRACTS_DIR

pytestmark = pytest.mark.timeout(300)

AMOUNT = 1_000_000


@dataclass
class Net:
    token: Any
    settlement: Any
    treasury: str
    arbiter: str
    payer: str
    providers: list[str]
    creator: str

    def lock(self, contract: int, amount: int = AMOUNT, *, provider: int = 0) -> int:
        with boa.env.prank(self.payer):
            index: int = self.settlement.lock(
                self.payer, _id(contract), self.providers[provider], self.creator, amount
            )
        return index

    def held(self) -> int:
        """What the contract owes: balances, escrow and stake of every party."""
        s = self.settlement
        parties = [self.treasury, self.payer, self.creator, *self.providers]
        return sum(s.balances(p) + s.escrowed(p) + s.staked(p) for p in parties)


def _id(n: int) -> bytes:
    return n.to_bytes(32, "big")


@pytest.fixture(scope="module")
def deployed() -> Net:
    treasury, arbiter = boa.env.generate_address(), boa.env.generate_address()
    payer, creator = boa.env.generate_address(), boa.env.generate_address()
    providers = [boa.env.generate_address() for _ in range(3)]
    token = boa.load(str(CONTRACTS_DIR / "PaymentToken.vy"), "credit", "CMC")
    settlement = boa.load(
        str(CONTRACTS_DIR / "Settlement.vy"), token.address, treasury, arbiter, 8000, 1500, 500
    )
    token.mint(payer, 10**12)
    with boa.env.prank(payer):
        token.approve(settlement.address, 2**256 - 1)
        settlement.deposit(payer, 10**11, _id(1))
    return Net(token, settlement, treasury, arbiter, payer, providers, creator)


@pytest.fixture
def net(deployed: Net) -> Iterator[Net]:
    with boa.env.anchor():
        yield deployed


def test_release_splits_and_final_refunds(net: Net) -> None:
    index = net.lock(10)
    with boa.env.prank(net.payer):
        net.settlement.release(net.payer, index, _id(100), 600_000, True)
    assert net.settlement.balances(net.providers[0]) == 480_000
    assert net.settlement.balances(net.treasury) == 90_000
    assert net.settlement.balances(net.creator) == 30_000
    assert net.settlement.escrowed(net.payer) == 0
    assert net.settlement.job_state(net.payer, index) >> 64 == 1
    assert net.held() == 10**11


def test_partial_releases_then_refund(net: Net) -> None:
    index = net.lock(11)
    with boa.env.prank(net.payer):
        net.settlement.release(net.payer, index, _id(101), 200_000, False)
        net.settlement.release(net.payer, index, _id(102), 300_000, False)
        assert net.settlement.job_state(net.payer, index) & (2**40 - 1) == 500_000
        net.settlement.refund(net.payer, index)
    assert net.settlement.escrowed(net.payer) == 0
    assert net.settlement.balances(net.providers[0]) == 400_000
    assert net.held() == 10**11


def test_releasing_twice_reverts(net: Net) -> None:
    index = net.lock(12)
    with boa.env.prank(net.payer):
        net.settlement.release(net.payer, index, _id(103), 1, False)
        with boa.reverts("result already released"):
            net.settlement.release(net.payer, index, _id(103), 1, False)
        net.settlement.release(net.payer, index, _id(104), 1, True)
        with boa.reverts("already settled"):
            net.settlement.release(net.payer, index, _id(105), 1, True)
        with boa.reverts("already settled"):
            net.settlement.refund(net.payer, index)


def test_release_without_a_result_or_beyond_the_escrow_reverts(net: Net) -> None:
    index = net.lock(13)
    with boa.env.prank(net.payer):
        with boa.reverts("no verified result"):
            net.settlement.release(net.payer, index, bytes(32), 1, True)
        with boa.reverts("exceeds escrow"):
            net.settlement.release(net.payer, index, _id(106), AMOUNT + 1, True)


def test_only_the_payer_or_its_operator_moves_its_escrow(net: Net) -> None:
    index = net.lock(14)
    operator = boa.env.generate_address()
    with boa.env.prank(operator), boa.reverts("not authorized"):
        net.settlement.release(net.payer, index, _id(107), 1, True)
    with boa.env.prank(net.payer):
        net.settlement.set_operator(operator, True)
    with boa.env.prank(operator):
        net.settlement.release(net.payer, index, _id(107), 1, True)


def test_lock_refuses_a_reused_contract_id_and_overdrafts(net: Net) -> None:
    net.lock(15)
    with boa.reverts("contract already locked"):
        net.lock(15)
    with boa.reverts("insufficient balance"):
        net.lock(16, 10**11)
    with boa.reverts("amount out of range"):
        net.lock(17, 2**40 - 1)


def test_slashing_needs_a_fraud_record_and_the_arbiter(net: Net) -> None:
    provider = net.providers[0]
    net.token.mint(provider, 10 * AMOUNT)
    with boa.env.prank(provider):
        net.token.approve(net.settlement.address, 2**256 - 1)
        net.settlement.deposit(provider, 10 * AMOUNT, _id(2))
        net.settlement.stake(provider, 5 * AMOUNT, _id(3))
    with boa.env.prank(net.arbiter):
        with boa.reverts("no fraud record"):
            net.settlement.slash(_id(200), AMOUNT)
        net.settlement.report_fraud(_id(200), provider, _id(999))
    with boa.env.prank(net.payer), boa.reverts("only the arbiter slashes"):
        net.settlement.slash(_id(200), AMOUNT)
    with boa.env.prank(net.arbiter):
        with boa.reverts("exceeds stake"):
            net.settlement.slash(_id(200), 6 * AMOUNT)
        net.settlement.slash(_id(200), AMOUNT)
        with boa.reverts("already slashed"):
            net.settlement.slash(_id(200), AMOUNT)
    assert net.settlement.staked(provider) == 4 * AMOUNT
    assert net.settlement.balances(net.treasury) == AMOUNT


def _settle(net: Net, items: list[BatchItem]) -> None:
    with boa.env.prank(net.payer):
        for call in plan_batches(items):
            net.settlement.settle_batch(
                net.payer, call.first, call.count, call.payees, call.entries, bytes(32)
            )


def test_batch_settles_each_job_once_with_per_job_splits(net: Net) -> None:
    indices = [net.lock(300 + k, provider=k % 3) for k in range(40)]
    payee_sets = [(net.settlement.job_state(net.payer, i) >> 40) & 0xFFFFFF for i in indices]
    amounts = [1000 * (k + 1) for k in range(40)]
    items = [BatchItem(i, a, p) for i, a, p in zip(indices, amounts, payee_sets, strict=True)]
    _settle(net, items)
    for k, provider in enumerate(net.providers):
        expected = sum(a - a * 1500 // 10000 - a * 500 // 10000 for a in amounts[k::3])
        assert net.settlement.balances(provider) == expected
    assert net.settlement.balances(net.creator) == sum(a * 500 // 10000 for a in amounts)
    assert net.settlement.escrowed(net.payer) == 0
    assert net.held() == 10**11
    with boa.reverts("already settled"):
        _settle(net, items[:1])


def test_batch_skips_jobs_left_out_and_checks_payees_and_escrow(net: Net) -> None:
    indices = [net.lock(400 + k) for k in range(6)]
    payee = (net.settlement.job_state(net.payer, indices[0]) >> 40) & 0xFFFFFF
    entries = pack_entries([5, SKIP, 5, SKIP, SKIP, 5])
    with boa.env.prank(net.payer):
        net.settlement.settle_batch(net.payer, indices[0], 6, [payee], entries, bytes(32))
        assert net.settlement.escrowed(net.payer) == 3 * AMOUNT
        with boa.reverts("wrong payee set"):
            wrong = pack_entries([5])
            net.settlement.settle_batch(net.payer, indices[1], 1, [payee + 1], wrong, bytes(32))
        with boa.reverts("exceeds escrow"):
            over = pack_entries([AMOUNT + 1])
            net.settlement.settle_batch(net.payer, indices[1], 1, [payee], over, bytes(32))
        with boa.reverts("entries too short"):
            net.settlement.settle_batch(net.payer, indices[1], 5, [payee], [], bytes(32))
    states = [net.settlement.job_state(net.payer, i) >> 64 for i in indices]
    assert states == [1, 0, 1, 0, 0, 1]


def test_batch_across_bitmap_words(net: Net) -> None:
    indices = [net.lock(500 + k) for k in range(300)]
    payee = (net.settlement.job_state(net.payer, indices[0]) >> 40) & 0xFFFFFF
    _settle(net, [BatchItem(i, 10, payee) for i in indices])
    assert net.settlement.escrowed(net.payer) == 0
    assert net.settlement.balances(net.providers[0]) == 300 * 9  # 10 - 1 (treasury) - 0
    assert net.held() == 10**11


def test_a_did_is_bound_once_and_cannot_be_claimed_by_another_account(net: Net) -> None:
    did, other_did = _id(7001), _id(7002)
    intruder = boa.env.generate_address()
    with boa.env.prank(net.providers[0]):
        net.settlement.bind(did)
        net.settlement.bind(did)  # the same pair again changes nothing
    with boa.env.prank(intruder), boa.reverts("DID bound to another account"):
        net.settlement.bind(did)
    with boa.env.prank(net.providers[0]), boa.reverts("account bound to another DID"):
        net.settlement.bind(other_did)
    assert net.settlement.account_of(did) == net.providers[0]
    assert net.settlement.did_of(net.providers[0]) == did
