"""What a provider checks about a contract's escrow before it countersigns."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from computemesh.models.market import ContractTerms
from computemesh.settlement.amounts import credits_to_units, format_credits
from computemesh.settlement.errors import SettlementError
from computemesh.settlement.ledger import Ledger
from computemesh.settlement.records import EscrowState


@runtime_checkable
class BoundAccounts(Protocol):
    """A ledger whose accounts are chain addresses bound to DIDs (``EvmLedger``): it names
    an escrow's parties by DID only for the addresses whose DIDs it has looked up."""

    def address_of(self, did: str) -> str | None:
        """The address the chain binds to ``did`` (remembered for the way back), or None."""
        ...


def require_escrow(ledger: Ledger, terms: ContractTerms) -> EscrowState:
    """The contract's escrow, once it is open, names both parties and covers ``max_charge``.

    On a chain the parties are addresses: the contract's consumer and provider DIDs are
    looked up in the chain's bindings first, so the escrow names them by DID exactly when
    the chain binds those DIDs to the escrow's payer and payee.

    Raises ``SettlementError``: ``no_escrow`` (nothing locked for the contract),
    ``escrow_closed``, ``escrow_mismatch`` (another consumer or provider), ``escrow_short``
    (less than ``max_charge`` left).
    """
    if isinstance(ledger, BoundAccounts):
        ledger.address_of(terms.consumer)
        ledger.address_of(terms.provider)
    try:
        state = ledger.escrow(terms.contract_id)
    except SettlementError as exc:
        if exc.code != "unknown_escrow":
            raise
        raise SettlementError(
            f"no escrow is locked for contract {terms.contract_id}",
            code="no_escrow",
            hint="the consumer locks max_charge on the ledger before sending the contract",
        ) from exc
    if state.closed:
        raise SettlementError(
            f"the escrow of contract {terms.contract_id} is settled", code="escrow_closed"
        )
    if (state.consumer, state.provider) != (terms.consumer, terms.provider):
        raise SettlementError(
            f"the escrow of contract {terms.contract_id} names other parties",
            code="escrow_mismatch",
        )
    needed = credits_to_units(terms.max_charge)
    if state.remaining < needed:
        raise SettlementError(
            f"the escrow holds {format_credits(state.remaining)} credits,"
            f" the contract may charge {format_credits(needed)}",
            code="escrow_short",
        )
    return state
