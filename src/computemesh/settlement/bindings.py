"""Accounts bound to DIDs and to chain addresses, each side proving it agrees.

A binding is a ``chain-account`` document signed by the DID over ``{"did", "address"}``,
plus the address's EIP-191 (``personal_sign``) signature over the same signed document's
canonical bytes. Neither key alone can claim the other's account.

A home's own chain account is derived from its DID's seed (``account_from_identity``:
BLAKE2b keyed with ``computemesh/evm/account/v1``), so the one key file holds both keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from computemesh.identity import Identity, canonical_json, sign_document, verify_document
from computemesh.models.errors import IdentityError
from computemesh.settlement.errors import SettlementError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

BINDING_KIND = "chain-account"
ACCOUNT_KEY_DOMAIN = b"computemesh/evm/account/v1"


@dataclass(frozen=True)
class AccountBinding:
    """``did`` and the chain ``address`` (EIP-55) that act as one account."""

    did: str
    address: str
    document: Mapping[str, Any] = field(repr=False)
    address_signature: str = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "did": self.did,
            "address": self.address,
            "document": dict(self.document),
            "address_signature": self.address_signature,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccountBinding:
        """Parse (without checking signatures); ``SettlementError`` if fields are missing."""
        try:
            return cls(
                did=str(data["did"]),
                address=str(data["address"]),
                document=dict(data["document"]),
                address_signature=str(data["address_signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SettlementError(f"not an account binding: {exc}", code="bad_binding") from exc


def account_from_identity(identity: Identity) -> LocalAccount:
    """The EVM account derived from ``identity``'s seed (see the module docstring)."""
    from eth_account import Account

    key = hashlib.blake2b(identity.seed, key=ACCOUNT_KEY_DOMAIN, digest_size=32).digest()
    account: LocalAccount = Account.from_key(key)
    return account


def bind_account(identity: Identity, account: LocalAccount) -> AccountBinding:
    """A binding of ``identity``'s DID to ``account``'s address, signed by both keys."""
    from eth_account.messages import encode_defunct  # eth_account is slow to import

    document = sign_document(
        identity, BINDING_KIND, {"did": identity.did, "address": account.address}
    )
    message = encode_defunct(primitive=canonical_json(document))
    signed = account.sign_message(message)
    return AccountBinding(
        did=identity.did,
        address=account.address,
        document=document,
        address_signature="0x" + bytes(signed.signature).hex(),
    )


def check_binding(binding: AccountBinding) -> None:
    """Raise ``SettlementError`` (``bad_binding``) unless both signatures check.

    The DID must sign ``{"did", "address"}`` with exactly the binding's values, the address
    must be EIP-55 checksummed, and the EIP-191 signature must recover to it.
    """
    from eth_account import Account  # eth_account is slow to import
    from eth_account.messages import encode_defunct
    from eth_utils.address import is_checksum_address

    if not is_checksum_address(binding.address):
        raise SettlementError(
            f"{binding.address!r} is not a checksummed address", code="bad_binding"
        )
    try:
        body = verify_document(dict(binding.document), kind=BINDING_KIND, signer=binding.did)
    except IdentityError as exc:
        raise SettlementError(f"binding: {exc.message}", code="bad_binding") from exc
    if body != {"did": binding.did, "address": binding.address}:
        raise SettlementError("the binding's document names another account", code="bad_binding")
    message = encode_defunct(primitive=canonical_json(dict(binding.document)))
    try:
        recovered = Account.recover_message(message, signature=binding.address_signature)
    except (ValueError, TypeError) as exc:
        raise SettlementError(f"binding: bad address signature: {exc}", code="bad_binding") from exc
    if recovered != binding.address:
        raise SettlementError("the address signature was made by another key", code="bad_binding")
