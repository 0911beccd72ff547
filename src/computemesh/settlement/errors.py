"""Settlement's branch of the one error family.

    MeshError
    └── SettlementError      a ledger operation refused, or a ledger that cannot be used

Codes (``SettlementError.code``), shared by every backend:

| code | meaning |
|---|---|
| ``bad_amount`` | not a positive integer number of units, or out of a backend's range |
| ``bad_split`` | shares that do not add up to 10000 basis points |
| ``insufficient_funds`` | an available balance smaller than a lock, stake or withdrawal |
| ``unknown_account`` | a DID with no account (or no chain address) on this ledger |
| ``unknown_escrow`` | no escrow is locked for this contract id |
| ``escrow_closed`` | the escrow was settled (final release or refund) already |
| ``exceeds_escrow`` | a release larger than what remains in the escrow |
| ``exceeds_stake`` | a slash larger than the provider's stake |
| ``unverified_result`` | a release without a valid verifier attestation |
| ``no_fraud_record`` | a slash without a valid fraud record signed by an arbiter |
| ``conflicting_retry`` | an id seen before with different content: never applied twice |
| ``bad_binding`` | an account binding whose signatures do not check |
| ``bad_receipt`` | a receipt whose signature, issuer or anchor does not check |
| ``chain_error`` | the chain refused or failed a transaction (``retryable`` when transient) |
| ``wrong_chain`` | an RPC endpoint serving another chain id than configured |
"""

from __future__ import annotations

from computemesh.models.errors import MeshError


class SettlementError(MeshError):
    """A ledger operation refused; ``code`` names the reason (table above)."""

    default_code = "settlement_error"


class ChainError(SettlementError):
    """The chain refused or failed a transaction; ``revert`` holds the contract's reason."""

    default_code = "chain_error"

    def __init__(
        self,
        message: str,
        *,
        revert: str | None = None,
        code: str | None = None,
        hint: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, code=code, hint=hint, retryable=retryable)
        self.revert = revert
