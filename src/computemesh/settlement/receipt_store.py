"""Receipts a chain client issued, by op id: for idempotent replies and ``history``.

The chain is the authority on what was paid; this store only remembers the signed
receipts (and the request each answered) so a retry gets the same receipt back and a
wallet can list its history without scanning the chain.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Integer, String, Text, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from computemesh.settlement.receipts import Receipt


class _Base(DeclarativeBase):
    pass


class _ReceiptRow(_Base):
    __tablename__ = "chain_receipts"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    op_id: Mapped[str] = mapped_column(String(160), unique=True)
    request: Mapped[str] = mapped_column(Text)
    document: Mapped[str] = mapped_column(Text)


class _PartyRow(_Base):
    __tablename__ = "chain_receipt_parties"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    did: Mapped[str] = mapped_column(String(128), index=True)
    op_id: Mapped[str] = mapped_column(String(160))


class ReceiptStore:
    """Receipts by op id, in SQLite (``url``) or in memory (the default)."""

    def __init__(self, url: str = "sqlite://") -> None:
        if url == "sqlite://":
            engine = create_engine(
                url, connect_args={"check_same_thread": False}, poolclass=StaticPool
            )
        else:
            engine = create_engine(url)
        _Base.metadata.create_all(engine)
        self._sessions: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)

    def get(self, op_id: str) -> tuple[dict[str, Any], Receipt] | None:
        """The request and receipt stored for ``op_id``, if any."""
        with self._sessions() as session:
            row = session.scalars(select(_ReceiptRow).where(_ReceiptRow.op_id == op_id)).first()
            if row is None:
                return None
            return json.loads(row.request), Receipt(json.loads(row.document))

    def put(self, receipt: Receipt, request: dict[str, Any], parties: Iterable[str | None]) -> None:
        """Remember ``receipt`` (a second put for the same op id is ignored)."""
        with self._sessions.begin() as session:
            exists = session.scalars(
                select(_ReceiptRow.seq).where(_ReceiptRow.op_id == receipt.op_id)
            ).first()
            if exists is not None:
                return
            session.add(
                _ReceiptRow(
                    op_id=receipt.op_id,
                    request=json.dumps(request),
                    document=json.dumps(receipt.to_dict()),
                )
            )
            for did in sorted({p for p in parties if p}):
                session.add(_PartyRow(did=did, op_id=receipt.op_id))

    def for_did(self, did: str) -> list[Receipt]:
        with self._sessions() as session:
            rows = session.scalars(
                select(_ReceiptRow)
                .join(_PartyRow, _PartyRow.op_id == _ReceiptRow.op_id)
                .where(_PartyRow.did == did)
                .order_by(_ReceiptRow.seq)
            ).all()
            return [Receipt(json.loads(row.document)) for row in rows]
