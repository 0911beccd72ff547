"""Reading settlement history back from the chain's logs.

The contract keeps only what it must (remaining escrow per job, a settled bit); what was
locked, paid and refunded per job is in its events. These functions rebuild it, so a
client that lost its receipts (or never had them) still answers ``escrow`` and replays
an already-applied operation without paying again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from web3 import Web3

from computemesh.settlement.batch import JobState, unpack_amounts
from computemesh.settlement.transactions import ChainClient, chain_key

INDEX_MASK = (1 << 96) - 1


@dataclass(frozen=True)
class JobRef:
    """Where a contract's escrow lives on chain."""

    payer: str
    index: int
    payee_set: int
    locked: int
    tx: str
    block: int


@dataclass(frozen=True)
class Payment:
    """One settlement step of a job: ``amount`` paid, ``refund`` returned."""

    amount: int
    refund: int
    final: bool
    result_key: bytes | None
    tx: str
    block: int
    batched: bool


def find_job(client: ChainClient, contract_id: str) -> JobRef | None:
    """The job locked for ``contract_id``, or None."""
    key = chain_key("contract", contract_id)
    packed = client.settlement.functions.job_of(key).call()
    if packed == 0:
        return None
    payer = Web3.to_checksum_address((packed >> 96).to_bytes(20, "big"))
    index = (packed & INDEX_MASK) - 1
    logs = _logs(client, "Locked", {"contract_id": key})
    log = logs[0]
    return JobRef(
        payer=payer,
        index=index,
        payee_set=int(log["args"]["payee_set"]),
        locked=int(log["args"]["amount"]),
        tx="0x" + bytes(log["transactionHash"]).hex(),
        block=int(log["blockNumber"]),
    )


def job_state(client: ChainClient, payer: str, index: int) -> JobState:
    return JobState.decode(client.settlement.functions.job_state(payer, index).call())


def job_payments(client: ChainClient, job: JobRef) -> list[Payment]:
    """Every release, batch settlement and refund of ``job``, oldest first."""
    found: list[tuple[tuple[int, int], Payment]] = []
    for log in _logs(client, "Released", {"payer": job.payer}):
        if int(log["args"]["index"]) == job.index:
            args = log["args"]
            payment = Payment(
                amount=int(args["amount"]),
                refund=int(args["refund"]),
                final=bool(args["final"]),
                result_key=bytes(args["result_id"]),
                tx=_tx(log),
                block=int(log["blockNumber"]),
                batched=False,
            )
            found.append((_order(log), payment))
    for log in _logs(client, "Refunded", {"payer": job.payer, "index": job.index}):
        payment = Payment(
            amount=0,
            refund=int(log["args"]["amount"]),
            final=True,
            result_key=None,
            tx=_tx(log),
            block=int(log["blockNumber"]),
            batched=False,
        )
        found.append((_order(log), payment))
    for log in _logs(client, "BatchSettled", {"payer": job.payer}):
        first, count = int(log["args"]["first"]), int(log["args"]["count"])
        if first <= job.index < first + count:
            amount = _batch_amount(client, log, job.index)
            if amount is not None:
                payment = Payment(
                    amount=amount,
                    refund=-1,
                    final=True,
                    result_key=None,
                    tx=_tx(log),
                    block=int(log["blockNumber"]),
                    batched=True,
                )
                found.append((_order(log), payment))
    return _with_batch_refunds(job.locked, [p for _, p in sorted(found, key=lambda f: f[0])])


def find_log(client: ChainClient, event: str, filters: dict[str, Any]) -> Any:
    """The first ``event`` log matching ``filters`` (indexed arguments), or None."""
    logs = _logs(client, event, filters)
    return logs[0] if logs else None


def _with_batch_refunds(locked: int, payments: list[Payment]) -> list[Payment]:
    """A batch settles a job's remainder: its refund is what was left less what it paid."""
    remaining = locked
    result = []
    for payment in payments:
        if payment.batched:
            payment = Payment(
                amount=payment.amount,
                refund=remaining - payment.amount,
                final=True,
                result_key=None,
                tx=payment.tx,
                block=payment.block,
                batched=True,
            )
        remaining -= payment.amount + payment.refund
        result.append(payment)
    return result


def _batch_amount(client: ChainClient, log: Any, index: int) -> int | None:
    tx = client.w3.eth.get_transaction(log["transactionHash"])
    _, args = client.settlement.decode_function_input(tx["input"])
    paid = unpack_amounts(int(args["first"]), int(args["count"]), list(args["entries"]))
    return paid.get(index)


def _logs(client: ChainClient, event: str, filters: dict[str, Any]) -> list[Any]:
    contract_event = getattr(client.settlement.events, event)
    return list(
        contract_event.get_logs(argument_filters=filters, from_block=client.deployment.block)
    )


def _tx(log: Any) -> str:
    return "0x" + bytes(log["transactionHash"]).hex()


def _order(log: Any) -> tuple[int, int]:
    return int(log["blockNumber"]), int(log["logIndex"])
