"""What lock, release and refund do to the embedded ledger's escrow, as postings.

Each ``plan_*`` function checks an operation against the escrow rows of an open
transaction, updates the row, and returns the postings and receipt fields to append.
It raises ``SettlementError`` (and the caller's transaction rolls back) when refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from computemesh.settlement.errors import SettlementError
from computemesh.settlement.journal import (
    EscrowRow,
    Posting,
    available_account,
    balance_of,
    escrow_account,
)
from computemesh.settlement.records import EscrowState, EscrowTerms, VerifiedResult
from computemesh.settlement.settings import LedgerSettings


@dataclass
class Planned:
    """An operation ready to append: what moves, who is involved, what the receipt says."""

    postings: list[Posting]
    receipt: dict[str, Any]
    parties: list[str | None]


def plan_lock(session: Session, escrow: EscrowTerms) -> Planned:
    available = balance_of(session, available_account(escrow.consumer))
    if available < escrow.amount:
        raise SettlementError(
            f"locking {escrow.amount} units needs more than the {available} available",
            code="insufficient_funds",
        )
    session.add(
        EscrowRow(
            contract_id=escrow.contract_id,
            consumer=escrow.consumer,
            provider=escrow.provider,
            creator=escrow.creator,
            locked=escrow.amount,
            released=0,
            refunded=0,
            closed=False,
        )
    )
    postings = [
        (available_account(escrow.consumer), -escrow.amount),
        (escrow_account(escrow.contract_id), escrow.amount),
    ]
    body = {
        "did": escrow.consumer,
        "amount": escrow.amount,
        "contract_id": escrow.contract_id,
        "job_id": escrow.job_id,
        "payees": {"provider": escrow.provider, "creator": escrow.creator},
    }
    return Planned(postings, body, [escrow.consumer, escrow.provider])


def plan_release(session: Session, result: VerifiedResult, settings: LedgerSettings) -> Planned:
    """Pay ``result`` from its escrow, split by ``settings``; a final one refunds the rest."""
    row = open_escrow(session, result.contract_id)
    check_verifier(row, result.verifier, settings)
    remaining = row.locked - row.released - row.refunded
    if result.amount > remaining:
        raise SettlementError(
            f"releasing {result.amount} units exceeds the {remaining} left in escrow",
            code="exceeds_escrow",
        )
    shares = settings.split.shares(result.amount)
    creator = row.creator or settings.treasury
    refund = remaining - result.amount if result.final else 0
    row.released += result.amount
    row.refunded += refund
    row.closed = result.final
    postings = [
        (escrow_account(row.contract_id), -(result.amount + refund)),
        (available_account(row.provider), shares.provider),
        (available_account(settings.treasury), shares.treasury),
        (available_account(creator), shares.creator),
        (available_account(row.consumer), refund),
    ]
    body = {
        "did": row.consumer,
        "amount": result.amount,
        "contract_id": row.contract_id,
        "result_id": result.result_id,
        "final": result.final,
        "shares": {
            "provider": shares.provider,
            "treasury": shares.treasury,
            "creator": shares.creator,
        },
        "payees": {"provider": row.provider, "treasury": settings.treasury, "creator": creator},
        "refund": refund,
    }
    return Planned(postings, body, [row.consumer, row.provider, row.creator])


def plan_refund(session: Session, contract_id: str) -> Planned:
    row = open_escrow(session, contract_id)
    remaining = row.locked - row.released - row.refunded
    row.refunded += remaining
    row.closed = True
    postings = [
        (escrow_account(contract_id), -remaining),
        (available_account(row.consumer), remaining),
    ]
    body = {"did": row.consumer, "amount": 0, "refund": remaining, "contract_id": contract_id}
    return Planned(postings, body, [row.consumer, row.provider])


def check_verifier(row: EscrowRow, verifier: str, settings: LedgerSettings) -> None:
    if verifier != row.consumer and verifier not in settings.verifiers:
        raise SettlementError(
            f"{verifier} may not attest results of contract {row.contract_id}",
            code="unverified_result",
            hint="the contract's consumer or a verifier named in the ledger settings signs",
        )


def escrow_row(session: Session, contract_id: str) -> EscrowRow:
    row = session.get(EscrowRow, contract_id)
    if row is None:
        raise SettlementError(f"no escrow for contract {contract_id}", code="unknown_escrow")
    return row


def open_escrow(session: Session, contract_id: str) -> EscrowRow:
    row = escrow_row(session, contract_id)
    if row.closed:
        raise SettlementError(f"the escrow of {contract_id} is settled", code="escrow_closed")
    return row


def escrow_state(row: EscrowRow) -> EscrowState:
    return EscrowState(
        contract_id=row.contract_id,
        consumer=row.consumer,
        provider=row.provider,
        creator=row.creator,
        locked=row.locked,
        released=row.released,
        refunded=row.refunded,
        closed=row.closed,
    )
