"""The embedded ledger: the ``Ledger`` contract over the signed, hash-chained journal."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from computemesh.identity import Identity
from computemesh.settlement.amounts import Split, check_amount
from computemesh.settlement.bindings import AccountBinding, check_binding
from computemesh.settlement.errors import SettlementError
from computemesh.settlement.escrow_plans import (
    Planned,
    escrow_row,
    escrow_state,
    plan_lock,
    plan_refund,
    plan_release,
)
from computemesh.settlement.journal import (
    ISSUANCE,
    BindingRow,
    EntryRow,
    EscrowRow,
    JournalReport,
    PartyRow,
    append_entry,
    available_account,
    balance_of,
    entry_body,
    open_journal,
    record_parties,
    stake_account,
    verify_journal,
)
from computemesh.settlement.receipts import Receipt, issue_receipt, verify_receipt
from computemesh.settlement.records import (
    Balance,
    EscrowState,
    EscrowTerms,
    FraudRecord,
    VerifiedResult,
    check_contract_id,
    check_did,
    check_fraud_record,
    check_operation_id,
    check_verified_result,
)
from computemesh.settlement.settings import LedgerSettings


def _now_ms() -> int:
    return int(time.time() * 1000)


class SqliteLedger:
    """``Ledger`` in one SQLite file; every entry signed by ``author``.

    Open with ``SqliteLedger.open(path, author, settings)``; ``settings`` is needed only to
    create a new ledger (it is written into the genesis entry) and must match an existing
    one. Safe to share between processes (writes take SQLite's lock at BEGIN).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        author: Identity,
        settings: LedgerSettings | None = None,
        *,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._sessions = sessions
        self._author = author
        self._clock = clock
        self._settings, self._ledger_id = self._genesis(settings)

    @classmethod
    def open(
        cls, path: Path | str, author: Identity, settings: LedgerSettings | None = None
    ) -> SqliteLedger:
        return cls(open_journal(f"sqlite:///{path}"), author, settings)

    @property
    def split(self) -> Split:
        return self._settings.split

    @property
    def treasury(self) -> str:
        return self._settings.treasury

    @property
    def settings(self) -> LedgerSettings:
        return self._settings

    @property
    def ledger_id(self) -> str:
        """The genesis entry's hash: names this ledger in receipts."""
        return self._ledger_id

    # operations ---------------------------------------------------------------------------

    def bind_account(self, binding: AccountBinding) -> Receipt:
        check_binding(binding)
        request = {"did": binding.did, "address": binding.address}

        def plan(session: Session) -> Planned:
            session.add(BindingRow(did=binding.did, address=binding.address))
            body = {"did": binding.did, "amount": 0, "address": binding.address}
            return Planned([], body, [binding.did])

        return self._run("bind", f"bind:{binding.did}:{binding.address}", request, plan)

    def deposit(self, did: str, amount: int, *, deposit_id: str) -> Receipt:
        check_did(did)
        check_amount(amount, what="deposit")
        check_operation_id(deposit_id, what="deposit id")
        request = {"did": did, "amount": amount}

        def plan(_session: Session) -> Planned:
            postings = [(ISSUANCE, -amount), (available_account(did), amount)]
            return Planned(postings, {"did": did, "amount": amount}, [did])

        return self._run("deposit", f"deposit:{deposit_id}", request, plan)

    def lock(self, escrow: EscrowTerms) -> Receipt:
        op_id = f"lock:{escrow.contract_id}"
        return self._run("lock", op_id, escrow.to_dict(), lambda s: plan_lock(s, escrow))

    def release(self, result: VerifiedResult) -> Receipt:
        return self.release_many([result])[0]

    def release_many(self, results: Sequence[VerifiedResult]) -> list[Receipt]:
        for result in results:
            check_verified_result(result)
        with self._sessions.begin() as session:
            return [self._release(session, result) for result in results]

    def refund(self, contract_id: str) -> Receipt:
        check_contract_id(contract_id)
        request = {"contract_id": contract_id}
        return self._run(
            "refund", f"refund:{contract_id}", request, lambda s: plan_refund(s, contract_id)
        )

    def stake(self, did: str, amount: int, *, stake_id: str) -> Receipt:
        check_did(did)
        check_amount(amount, what="stake")
        check_operation_id(stake_id, what="stake id")

        def plan(session: Session) -> Planned:
            available = balance_of(session, available_account(did))
            if available < amount:
                raise SettlementError(
                    f"staking {amount} units needs more than the {available} available",
                    code="insufficient_funds",
                )
            postings = [(available_account(did), -amount), (stake_account(did), amount)]
            return Planned(postings, {"did": did, "amount": amount}, [did])

        return self._run("stake", f"stake:{stake_id}", {"did": did, "amount": amount}, plan)

    def slash(self, fraud: FraudRecord) -> Receipt:
        check_fraud_record(fraud, arbiters=self._settings.arbiters)

        def plan(session: Session) -> Planned:
            staked = balance_of(session, stake_account(fraud.provider))
            if staked < fraud.amount:
                raise SettlementError(
                    f"slashing {fraud.amount} units exceeds the stake of {staked}",
                    code="exceeds_stake",
                )
            postings = [
                (stake_account(fraud.provider), -fraud.amount),
                (available_account(self.treasury), fraud.amount),
            ]
            body = {
                "did": fraud.provider,
                "amount": fraud.amount,
                "fraud_id": fraud.fraud_id,
                "contract_id": fraud.contract_id,
                "evidence": list(fraud.evidence),
            }
            return Planned(postings, body, [fraud.provider, self.treasury])

        return self._run("slash", f"slash:{fraud.fraud_id}", fraud.fields(), plan)

    # queries ------------------------------------------------------------------------------

    def balance(self, did: str) -> Balance:
        check_did(did)
        with self._sessions() as session:
            escrows = session.scalars(
                select(EscrowRow).where(EscrowRow.consumer == did, EscrowRow.closed.is_(False))
            ).all()
            return Balance(
                did=did,
                available=balance_of(session, available_account(did)),
                escrowed=sum(row.locked - row.released - row.refunded for row in escrows),
                staked=balance_of(session, stake_account(did)),
            )

    def escrow(self, contract_id: str) -> EscrowState:
        check_contract_id(contract_id)
        with self._sessions() as session:
            return escrow_state(escrow_row(session, contract_id))

    def history(self, did: str) -> list[Receipt]:
        with self._sessions() as session:
            rows = session.scalars(
                select(EntryRow)
                .join(PartyRow, PartyRow.seq == EntryRow.seq)
                .where(PartyRow.did == did)
                .order_by(EntryRow.seq)
            ).all()
            return [Receipt(json.loads(row.receipt)) for row in rows if row.receipt]

    def addresses(self, did: str) -> list[str]:
        """The chain addresses bound to ``did``."""
        with self._sessions() as session:
            rows = session.scalars(select(BindingRow).where(BindingRow.did == did)).all()
            return sorted(row.address for row in rows)

    def check_receipt(self, document: Mapping[str, Any]) -> Receipt:
        receipt = verify_receipt(dict(document))
        anchor = receipt.anchor
        if anchor.get("backend") != "sqlite" or anchor.get("ledger") != self._ledger_id:
            raise SettlementError("the receipt is anchored in another ledger", code="bad_receipt")
        with self._sessions() as session:
            row = session.get(EntryRow, anchor.get("seq"))
            if row is None or row.hash != anchor.get("entry") or row.receipt is None:
                raise SettlementError(
                    "the receipt's entry is not in this ledger", code="bad_receipt"
                )
            if json.loads(row.receipt) != dict(document):
                raise SettlementError("the receipt differs from the one issued", code="bad_receipt")
        return receipt

    def verify(self) -> JournalReport:
        """Check the whole journal (see ``journal.verify_journal``)."""
        with self._sessions() as session:
            return verify_journal(session)

    # internals ----------------------------------------------------------------------------

    def _genesis(self, settings: LedgerSettings | None) -> tuple[LedgerSettings, str]:
        with self._sessions.begin() as session:
            first = session.get(EntryRow, 0)
            if first is not None:
                stored = LedgerSettings.from_dict(entry_body(first)["data"]["settings"])
                if settings is not None and settings != stored:
                    raise SettlementError(
                        "this ledger was created with other settings",
                        code="settings_mismatch",
                        hint="open it without settings to use the ones in its genesis entry",
                    )
                return stored, first.hash
            if settings is None:
                raise SettlementError("a new ledger needs settings", code="no_ledger")
            check_did(settings.treasury, what="treasury")
            data = {"settings": settings.to_dict(), "authors": [self._author.did]}
            row = append_entry(
                session,
                self._author,
                op="genesis",
                op_id="genesis",
                postings=[],
                data=data,
                at_ms=self._clock(),
            )
            return settings, row.hash

    def _run(
        self,
        op: str,
        op_id: str,
        request: dict[str, Any],
        plan: Callable[[Session], Planned],
    ) -> Receipt:
        with self._sessions.begin() as session:
            return self._apply(session, op, op_id, request, plan)

    def _apply(
        self,
        session: Session,
        op: str,
        op_id: str,
        request: dict[str, Any],
        plan: Callable[[Session], Planned],
    ) -> Receipt:
        """Replay a known ``op_id`` (same request) or plan, append and sign a receipt."""
        existing = session.scalars(select(EntryRow).where(EntryRow.op_id == op_id)).first()
        if existing is not None:
            if entry_body(existing)["data"].get("request") != json.loads(json.dumps(request)):
                raise SettlementError(
                    f"{op_id} was applied before with other content", code="conflicting_retry"
                )
            return Receipt(json.loads(existing.receipt or "{}"))
        planned = plan(session)
        at_ms = self._clock()
        row = append_entry(
            session,
            self._author,
            op=op,
            op_id=op_id,
            postings=planned.postings,
            data={"request": request},
            at_ms=at_ms,
        )
        anchor = {"backend": "sqlite", "ledger": self._ledger_id, "seq": row.seq, "entry": row.hash}
        body = {**planned.receipt, "op": op, "op_id": op_id, "anchor": anchor, "at_ms": at_ms}
        receipt = issue_receipt(self._author, body)
        row.receipt = json.dumps(receipt.to_dict())
        record_parties(session, row.seq, planned.parties)
        return receipt

    def _release(self, session: Session, result: VerifiedResult) -> Receipt:
        op_id = f"release:{result.result_id}"
        return self._apply(
            session,
            "release",
            op_id,
            result.fields(),
            lambda s: plan_release(s, result, self._settings),
        )
