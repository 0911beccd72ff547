"""Receipts: what a ledger signs for each operation it applied.

A receipt is a ``settlement-receipt`` document signed by the ledger's author (the
operator of an embedded ledger, or the client that sent a chain transaction). Its body::

    {
      "op": "deposit" | "lock" | "release" | "refund" | "stake" | "slash" | "bind",
      "op_id": "release:<result id>",          the idempotency key: one receipt per op_id
      "did": "did:key:...",                    the account the operation is about
      "amount": 123,                           units moved by the operation
      "contract_id" / "result_id" / "fraud_id": when the operation has one,
      "shares": {"provider", "treasury", "creator"},   for a release
      "payees": {"provider", "treasury", "creator"},   DIDs paid, for a release
      "refund": 45,                            units returned to the consumer
      "anchor": {...},                         where the operation is recorded
      "at_ms": 1790000000000
    }

``anchor`` is ``{"backend": "sqlite", "ledger", "seq", "entry"}`` for the embedded ledger
(the entry's hash in the chain) or ``{"backend": "evm", "chain_id", "contract", "tx",
"block"}`` on chain. A ledger's ``check_receipt`` proves the anchor is really there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from computemesh.identity import Identity, sign_document, verify_document
from computemesh.models.errors import IdentityError
from computemesh.settlement.errors import SettlementError

RECEIPT_KIND = "settlement-receipt"
OPERATIONS = frozenset({"deposit", "lock", "release", "refund", "stake", "slash", "bind"})


@dataclass(frozen=True)
class Receipt:
    """A signed receipt (``document``) and typed access to its body."""

    document: Mapping[str, Any]

    @property
    def body(self) -> Mapping[str, Any]:
        return cast(Mapping[str, Any], self.document["body"])

    @property
    def issuer(self) -> str:
        return str(self.document["signer"])

    @property
    def op(self) -> str:
        return str(self.body["op"])

    @property
    def op_id(self) -> str:
        return str(self.body["op_id"])

    @property
    def did(self) -> str:
        return str(self.body["did"])

    @property
    def amount(self) -> int:
        return int(self.body["amount"])

    @property
    def refund(self) -> int:
        return int(self.body.get("refund", 0))

    @property
    def shares(self) -> dict[str, int]:
        shares = self.body.get("shares") or {}
        return {str(k): int(v) for k, v in shares.items()}

    @property
    def anchor(self) -> Mapping[str, Any]:
        return cast(Mapping[str, Any], self.body["anchor"])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.document)


def issue_receipt(author: Identity, body: Mapping[str, Any]) -> Receipt:
    """``body`` signed by ``author`` as a receipt. ``ValueError`` for an unknown op."""
    if body.get("op") not in OPERATIONS:
        raise ValueError(f"unknown ledger operation {body.get('op')!r}")
    return Receipt(sign_document(author, RECEIPT_KIND, body))


def verify_receipt(document: object, *, issuer: str | None = None) -> Receipt:
    """The receipt, once its signature (by ``issuer``, when given) and shape check.

    Raises ``SettlementError`` (``bad_receipt``) for a bad signature, another signer or
    kind, or a body without ``op``, ``op_id``, ``did``, ``amount`` and ``anchor``.
    """
    try:
        body = verify_document(document, kind=RECEIPT_KIND, signer=issuer)
    except IdentityError as exc:
        raise SettlementError(f"receipt refused: {exc.message}", code="bad_receipt") from exc
    missing = {"op", "op_id", "did", "amount", "anchor"} - body.keys()
    if missing or body.get("op") not in OPERATIONS or not isinstance(body.get("anchor"), dict):
        raise SettlementError(
            f"receipt body is malformed (missing {sorted(missing)})", code="bad_receipt"
        )
    return Receipt(cast(dict[str, Any], document))
