"""What a provider checks about a contract's escrow before it countersigns."""

from __future__ import annotations

from computemesh.models.market import ContractTerms
from computemesh.settlement.amounts import credits_to_units, format_credits
from computemesh.settlement.errors import SettlementError
from computemesh.settlement.ledger import Ledger
from computemesh.settlement.records import EscrowState


def require_escrow(ledger: Ledger, terms: ContractTerms) -> EscrowState:
    """The contract's escrow, once it is open, names both parties and covers ``max_charge``.

    Raises ``SettlementError``: ``no_escrow`` (nothing locked for the contract),
    ``escrow_closed``, ``escrow_mismatch`` (another consumer or provider), ``escrow_short``
    (less than ``max_charge`` left).
    """
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
