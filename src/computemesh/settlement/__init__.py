"""Settlement: escrow per contract, payment per verified result, stake and slashing.

One interface, ``Ledger`` (contract in its docstring), with two backends:

- ``SqliteLedger``: the embedded default; double-entry, every entry signed by its author
  and hash-chained to the previous one (``verify`` / ``cmesh ledger verify``);
- ``EvmLedger``: a web3.py client over the Vyper contracts in ``contracts/`` (escrow,
  batched settlement, stake and slashing; an ERC-20 token for test networks).

Money is ``int`` units, a millionth of a credit (``credits_to_units`` converts the market's
float credits). A release takes a ``VerifiedResult`` (``attest_result``) and returns a signed
``Receipt``.
"""

import importlib
from typing import TYPE_CHECKING, Any

from computemesh.settlement.amounts import (
    BPS,
    UNITS_PER_CREDIT,
    Shares,
    Split,
    credits_to_units,
    format_credits,
    units_to_credits,
)
from computemesh.settlement.bindings import AccountBinding, bind_account, check_binding
from computemesh.settlement.errors import ChainError, SettlementError
from computemesh.settlement.journal import JournalReport
from computemesh.settlement.ledger import Ledger
from computemesh.settlement.receipts import RECEIPT_KIND, Receipt, verify_receipt
from computemesh.settlement.records import (
    Balance,
    EscrowState,
    EscrowTerms,
    FraudRecord,
    VerifiedResult,
    attest_result,
    record_fraud,
)
from computemesh.settlement.settings import LedgerSettings
from computemesh.settlement.sqlite import SqliteLedger

if TYPE_CHECKING:
    from computemesh.settlement.chain import (
        KNOWN_CHAINS,
        ChainSettings,
        Deployment,
        chain_settings,
        connect,
        deploy_settlement,
    )
    from computemesh.settlement.evm import EvmLedger
    from computemesh.settlement.receipt_store import ReceiptStore
    from computemesh.settlement.transactions import ChainClient

_CHAIN_NAMES = {
    "KNOWN_CHAINS": "chain",
    "ChainSettings": "chain",
    "Deployment": "chain",
    "chain_settings": "chain",
    "connect": "chain",
    "deploy_settlement": "chain",
    "EvmLedger": "evm",
    "ReceiptStore": "receipt_store",
    "ChainClient": "transactions",
}


def __getattr__(name: str) -> Any:
    """The chain side (web3, vyper: seconds to import) loads on first use."""
    module = _CHAIN_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "BPS",
    "KNOWN_CHAINS",
    "RECEIPT_KIND",
    "UNITS_PER_CREDIT",
    "AccountBinding",
    "Balance",
    "ChainClient",
    "ChainError",
    "ChainSettings",
    "Deployment",
    "EscrowState",
    "EscrowTerms",
    "EvmLedger",
    "FraudRecord",
    "JournalReport",
    "Ledger",
    "LedgerSettings",
    "Receipt",
    "ReceiptStore",
    "SettlementError",
    "Shares",
    "Split",
    "SqliteLedger",
    "VerifiedResult",
    "attest_result",
    "bind_account",
    "chain_settings",
    "check_binding",
    "connect",
    "credits_to_units",
    "deploy_settlement",
    "format_credits",
    "record_fraud",
    "units_to_credits",
    "verify_receipt",
]
