"""The one ledger interface the orchestrator and the node settle through.

Implementations: ``SqliteLedger`` (embedded, the default) and ``EvmLedger`` (Vyper
contracts on an EVM chain). Both pass the same contract test suite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from computemesh.settlement.amounts import Split
from computemesh.settlement.bindings import AccountBinding
from computemesh.settlement.receipts import Receipt
from computemesh.settlement.records import (
    Balance,
    EscrowState,
    EscrowTerms,
    FraudRecord,
    VerifiedResult,
)
from computemesh.settlement.settings import LedgerSettings


@runtime_checkable
class Ledger(Protocol):
    """Accounts, escrow per contract, payment per verified result, stake and slashing.

    Money is ``int`` units (``amounts.UNITS_PER_CREDIT`` per credit); accounts are DIDs.

    **Idempotence.** Every operation that moves money has an id: ``deposit_id``, the
    contract id (``lock``, ``refund``), the result id (``release``), ``stake_id``, the fraud
    id (``slash``). Applying an id again returns the receipt of the first application and
    moves nothing; the same id with different content raises ``conflicting_retry``.
    Retried messages therefore never pay twice.

    **Refusals** raise ``SettlementError`` and change nothing (codes in
    ``settlement.errors``): spending more than an available balance, releasing more than the
    escrow's remainder, releasing on a settled escrow, a release whose attestation is not
    signed by the contract's consumer or a trusted verifier, a slash without an arbiter's
    fraud record or beyond the stake. Balances never go negative; every operation moves
    money between accounts, so the total supply only changes by deposits.

    **Release.** Each release pays its amount from the escrow, split by ``split``
    (provider / treasury / model creator, the creator's share to the treasury when the
    contract names none). A ``final`` release closes the escrow and refunds the rest to
    the consumer; ``refund`` closes it paying nothing more. A job that fails midway is
    paid for its verified checkpoints (non-final releases) and refunded the rest.
    """

    @property
    def split(self) -> Split:
        """The network's shares of each released amount."""
        ...

    @property
    def treasury(self) -> str:
        """The treasury's DID."""
        ...

    @property
    def settings(self) -> LedgerSettings:
        """The network's rules: treasury, split, arbiters and verifiers."""
        ...

    def bind_account(self, binding: AccountBinding) -> Receipt:
        """Record that ``binding.did`` and ``binding.address`` are one account.

        Raises ``bad_binding`` unless both signatures check. Idempotent per DID and address.
        """
        ...

    def deposit(self, did: str, amount: int, *, deposit_id: str) -> Receipt:
        """Add ``amount`` units from outside the ledger to ``did``'s available balance."""
        ...

    def lock(self, escrow: EscrowTerms) -> Receipt:
        """Move ``escrow.amount`` from the consumer's available balance into the contract's
        escrow. Raises ``insufficient_funds``."""
        ...

    def release(self, result: VerifiedResult) -> Receipt:
        """Pay ``result.amount`` from the contract's escrow (see the class docstring)."""
        ...

    def release_many(self, results: Sequence[VerifiedResult]) -> list[Receipt]:
        """``release`` for each result, receipts in the same order.

        Backends may settle final results in batches (one chain transaction for many
        jobs); a refused result raises before any of the batch is applied where the
        backend can check it first, and never applies a result twice.
        """
        ...

    def refund(self, contract_id: str) -> Receipt:
        """Close the escrow and return its remainder to the consumer."""
        ...

    def stake(self, did: str, amount: int, *, stake_id: str) -> Receipt:
        """Move ``amount`` of ``did``'s available balance into its stake."""
        ...

    def slash(self, fraud: FraudRecord) -> Receipt:
        """Move ``fraud.amount`` of the provider's stake to the treasury.

        Raises ``no_fraud_record`` unless an arbiter of this ledger signed ``fraud``, and
        ``exceeds_stake`` beyond the stake.
        """
        ...

    def balance(self, did: str) -> Balance:
        """``did``'s balances (all zero for an account never seen)."""
        ...

    def escrow(self, contract_id: str) -> EscrowState:
        """The contract's escrow; raises ``unknown_escrow``."""
        ...

    def history(self, did: str) -> list[Receipt]:
        """Receipts of operations that involved ``did``, oldest first."""
        ...

    def check_receipt(self, document: Mapping[str, Any]) -> Receipt:
        """The receipt, once its signature checks and its anchor is found in this ledger
        with the same content. Raises ``bad_receipt`` otherwise."""
        ...
