"""Checking a chain receipt: its issuer, its anchored transaction, and its body.

A receipt an ``EvmLedger`` issues states what the chain recorded: who deposited how much,
which job was locked for which payees, what a release paid and refunded. A receipt is
accepted only when

- it is signed by the settlement authority expected here (the ledger client's author);
- its anchor names this deployment, and a successful transaction in the anchored block
  that emitted the settlement contract's events;
- the body matches that transaction's events (a batch's amounts come from its calldata):
  the same account, amounts, refund, shares and payees.

A receipt re-signed with other amounts by the right key would still fail the last check;
one signed by any other key fails the first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from web3.logs import DISCARD

from computemesh.settlement.amounts import Split
from computemesh.settlement.chain_book import ChainBook
from computemesh.settlement.chain_events import JobRef, find_job, job_payments
from computemesh.settlement.errors import SettlementError
from computemesh.settlement.receipts import Receipt, verify_receipt
from computemesh.settlement.transactions import ZERO_ADDRESS, ChainClient, chain_key, did_hash


def check_chain_receipt(
    client: ChainClient, book: ChainBook, split: Split, document: Mapping[str, Any]
) -> Receipt:
    """The receipt once issuer, anchor and body check (module docstring); ``bad_receipt``
    naming the first thing that does not."""
    receipt = verify_receipt(dict(document), issuer=book.author)
    view = AnchoredTransaction(client, book, split, _anchored_receipt(client, receipt))
    problem = _BODY_CHECKS[receipt.op](view, receipt)
    if problem is not None:
        raise SettlementError(f"the receipt {problem}", code="bad_receipt")
    stored = book.stored(receipt.op_id)
    if stored is not None and stored.to_dict() != dict(document):
        raise SettlementError("the receipt differs from the one issued", code="bad_receipt")
    return receipt


@dataclass(frozen=True)
class AnchoredTransaction:
    """The transaction a receipt is anchored to, and what is needed to read it."""

    client: ChainClient
    book: ChainBook
    split: Split
    tx: Any

    def events(self, name: str) -> list[Mapping[str, Any]]:
        """The arguments of the settlement contract's ``name`` events in the transaction."""
        settlement = self.client.settlement
        decoded = getattr(settlement.events, name)().process_receipt(self.tx, errors=DISCARD)
        return [event["args"] for event in decoded if event["address"] == settlement.address]

    def address_of(self, did: object) -> str | None:
        return self.book.address_of(did) if isinstance(did, str) else None

    def anchor_tx(self) -> str:
        return "0x" + bytes(self.tx["transactionHash"]).hex()


def _anchored_receipt(client: ChainClient, receipt: Receipt) -> Any:
    anchor = receipt.anchor
    deployment = client.deployment
    if (anchor.get("backend"), anchor.get("chain_id"), anchor.get("contract")) != (
        "evm",
        deployment.chain_id,
        deployment.settlement,
    ):
        raise SettlementError("the receipt is anchored elsewhere", code="bad_receipt")
    try:
        tx = client.w3.eth.get_transaction_receipt(anchor["tx"])
    except Exception as exc:  # web3 raises TransactionNotFound or a provider error
        raise SettlementError(
            "the receipt's transaction is not on chain", code="bad_receipt"
        ) from exc
    if tx["status"] != 1 or tx["blockNumber"] != anchor.get("block"):
        raise SettlementError("the receipt's transaction does not match", code="bad_receipt")
    return tx


def _id_of(receipt: Receipt) -> str:
    """The operation's own id: the op id without its ``<op>:`` prefix."""
    return receipt.op_id.partition(":")[2]


def _first(events: list[Mapping[str, Any]], **expected: object) -> Mapping[str, Any] | None:
    for args in events:
        if all(args.get(name) == value for name, value in expected.items()):
            return args
    return None


def _check_bind(view: AnchoredTransaction, receipt: Receipt) -> str | None:
    address = receipt.body.get("address")
    found = _first(view.events("Bound"), account=address, did_hash=did_hash(receipt.did))
    return None if found is not None else "binds an account the chain did not bind there"


def _check_amount_event(
    event: str, id_kind: str, id_field: str, account_field: str
) -> Callable[[AnchoredTransaction, Receipt], str | None]:
    """Deposit, stake and slash: one event keyed by the op's id, naming account and amount."""

    def check(view: AnchoredTransaction, receipt: Receipt) -> str | None:
        args = _first(view.events(event), **{id_field: chain_key(id_kind, _id_of(receipt))})
        if args is None:
            return f"names a {receipt.op} the anchored transaction did not make"
        if args[account_field] != view.address_of(receipt.did):
            return f"names another account than the chain's {receipt.op}"
        if args["amount"] != receipt.amount:
            return f"states {receipt.amount} units, the chain {args['amount']}"
        return None

    return check


def _job_of(view: AnchoredTransaction, receipt: Receipt) -> JobRef | str:
    contract_id = receipt.body.get("contract_id")
    job = find_job(view.client, contract_id) if isinstance(contract_id, str) else None
    if job is None:
        return "names a contract with no escrow on chain"
    if job.payer != view.address_of(receipt.did):
        return "names another consumer than the chain's escrow"
    return job


def _check_payees(view: AnchoredTransaction, job: JobRef, payees: object) -> str | None:
    if not isinstance(payees, Mapping):
        return "has no payees"
    provider, creator = view.client.settlement.functions.payee_sets(job.payee_set).call()
    named_creator = payees.get("creator")
    if named_creator in (None, view.book.treasury):
        expected_creator: set[str | None] = {ZERO_ADDRESS, view.client.deployment.treasury}
    else:
        expected_creator = {view.address_of(named_creator)}
    if view.address_of(payees.get("provider")) != provider or creator not in expected_creator:
        return "names other payees than the chain's escrow"
    return None


def _check_lock(view: AnchoredTransaction, receipt: Receipt) -> str | None:
    job = _job_of(view, receipt)
    if isinstance(job, str):
        return job
    key = chain_key("contract", str(receipt.body.get("contract_id")))
    args = _first(view.events("Locked"), contract_id=key)
    if args is None:
        return "names a lock the anchored transaction did not make"
    if args["amount"] != receipt.amount:
        return f"states {receipt.amount} units locked, the chain {args['amount']}"
    return _check_payees(view, job, receipt.body.get("payees"))


def _check_release(view: AnchoredTransaction, receipt: Receipt) -> str | None:
    job = _job_of(view, receipt)
    if isinstance(job, str):
        return job
    result_key = chain_key("result", _id_of(receipt))
    tx = view.anchor_tx()
    payment = next(
        (
            p
            for p in job_payments(view.client, job)
            if p.tx == tx and (p.batched or p.result_key == result_key)
        ),
        None,
    )
    if payment is None:
        return "names a release the anchored transaction did not make"
    body = receipt.body
    stated = (receipt.amount, receipt.refund, bool(body.get("final")))
    on_chain = (payment.amount, payment.refund, payment.final)
    if stated != on_chain:
        return f"states (amount, refund, final) {stated}, the chain {on_chain}"
    shares = view.split.shares(payment.amount)
    if receipt.shares != {
        "provider": shares.provider,
        "treasury": shares.treasury,
        "creator": shares.creator,
    }:
        return "states other shares than the split of the amount paid"
    return _check_payees(view, job, body.get("payees"))


def _check_refund(view: AnchoredTransaction, receipt: Receipt) -> str | None:
    job = _job_of(view, receipt)
    if isinstance(job, str):
        return job
    args = _first(view.events("Refunded"), payer=job.payer, index=job.index)
    if args is None:
        return "names a refund the anchored transaction did not make"
    if (receipt.amount, receipt.refund) != (0, args["amount"]):
        return f"states a refund of {receipt.refund} units, the chain {args['amount']}"
    return None


_BODY_CHECKS: dict[str, Callable[[AnchoredTransaction, Receipt], str | None]] = {
    "bind": _check_bind,
    "deposit": _check_amount_event("Deposited", "deposit", "deposit_id", "beneficiary"),
    "stake": _check_amount_event("Staked", "stake", "stake_id", "provider"),
    "slash": _check_amount_event("Slashed", "fraud", "fraud_id", "provider"),
    "lock": _check_lock,
    "release": _check_release,
    "refund": _check_refund,
}
