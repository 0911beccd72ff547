"""Sending settlement transactions: who signs, and what a revert means.

``ChainClient`` holds the web3 connection, the two contracts of a ``Deployment`` and the
keys this process may sign with. Every revert is translated into a ``ChainError`` whose
``code`` is the ledger's refusal code (``exceeds_escrow``, ``insufficient_funds``, ...),
so callers see the same errors from the chain as from the embedded ledger.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception
from web3.types import TxReceipt

from computemesh.settlement.chain import Deployment, compiled
from computemesh.settlement.errors import ChainError

ZERO_ADDRESS = "0x" + "00" * 20

REVERT_CODES = (
    ("insufficient balance", "insufficient_funds"),
    ("exceeds escrow", "exceeds_escrow"),
    ("already settled", "escrow_closed"),
    ("no such job", "unknown_escrow"),
    ("no verified result", "unverified_result"),
    ("result already released", "conflicting_retry"),
    ("contract already locked", "conflicting_retry"),
    ("id already used", "conflicting_retry"),
    ("no fraud record", "no_fraud_record"),
    ("already slashed", "conflicting_retry"),
    ("exceeds stake", "exceeds_stake"),
    ("not authorized", "not_authorized"),
    ("only the arbiter", "not_authorized"),
    ("amount out of range", "bad_amount"),
    ("wrong payee set", "bad_batch"),
)


def chain_key(kind: str, value: str) -> bytes:
    """The bytes32 a ledger id has on chain: SHA-256 of ``computemesh/<kind>/<value>``."""
    return hashlib.sha256(f"computemesh/{kind}/{value}".encode()).digest()


def did_hash(did: str) -> bytes:
    """The bytes32 a DID is bound under on chain: SHA-256 of its text."""
    return hashlib.sha256(did.encode()).digest()


def revert_error(exc: Exception, action: str) -> ChainError:
    """A ``ChainError`` for a failed call, its code taken from the revert reason."""
    reason = str(getattr(exc, "message", None) or exc)
    for needle, code in REVERT_CODES:
        if needle in reason:
            return ChainError(f"{action} refused by the chain: {needle}", code=code, revert=reason)
    return ChainError(f"{action} failed: {reason}", revert=reason)


class ChainClient:
    """The settlement and token contracts of ``deployment`` and the keys held for them."""

    def __init__(
        self,
        w3: Web3,
        deployment: Deployment,
        keys: Sequence[LocalAccount],
        *,
        operator: LocalAccount | None = None,
        receipt_timeout: float = 120.0,
    ) -> None:
        if w3.eth.chain_id != deployment.chain_id:
            raise ChainError("the deployment is for another chain", code="wrong_chain")
        self.w3 = w3
        self.deployment = deployment
        self.keys: dict[str, LocalAccount] = {str(key.address): key for key in keys}
        self.operator = operator or (keys[0] if keys else None)
        if self.operator is not None:
            self.keys.setdefault(self.operator.address, self.operator)
        self.settlement: Contract = w3.eth.contract(
            address=Web3.to_checksum_address(deployment.settlement),
            abi=compiled("Settlement").abi,
        )
        self.token: Contract = w3.eth.contract(
            address=Web3.to_checksum_address(deployment.token), abi=compiled("PaymentToken").abi
        )
        self._timeout = receipt_timeout

    def signer_for(self, account: str) -> LocalAccount:
        """The key that may act for ``account``: its own, or an operator it approved."""
        own = self.keys.get(account)
        if own is not None:
            return own
        operator = self.operator
        if (
            operator is not None
            and self.settlement.functions.operators(account, operator.address).call()
        ):
            return operator
        raise ChainError(
            f"no key held for {account}, and it approved no operator held here",
            code="not_authorized",
            hint="hold its key, or have it call set_operator(<operator address>, true)",
        )

    def key(self, address: str) -> LocalAccount:
        key = self.keys.get(Web3.to_checksum_address(address))
        if key is None:
            raise ChainError(f"no key held for {address}", code="not_authorized")
        return key

    def send(self, function: ContractFunction, sender: LocalAccount, action: str) -> TxReceipt:
        """Sign and send ``function`` from ``sender``; wait for its receipt.

        Raises ``ChainError`` with the refusal's code when the call would revert (checked
        by gas estimation before anything is sent) or reverted when mined.
        """
        try:
            tx: Any = function.build_transaction(
                {
                    "from": sender.address,
                    "nonce": self.w3.eth.get_transaction_count(sender.address, "pending"),
                    "chainId": self.deployment.chain_id,
                }
            )
        except ContractLogicError as exc:
            raise revert_error(exc, action) from exc
        except Web3Exception as exc:
            raise ChainError(f"{action}: {exc}", retryable=True) from exc
        signed = sender.sign_transaction(tx)
        try:
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self._timeout, poll_latency=0.01
            )
        except TimeExhausted as exc:
            raise ChainError(f"{action}: not mined in time", retryable=True) from exc
        except ContractLogicError as exc:
            raise revert_error(exc, action) from exc
        except Web3Exception as exc:
            raise ChainError(f"{action} was not accepted: {exc}") from exc
        if receipt["status"] != 1:
            raise ChainError(f"{action} reverted on chain", code="chain_error")
        return receipt

    def ensure_allowance(self, owner: LocalAccount, amount: int) -> None:
        """Let the settlement contract pull ``amount`` of ``owner``'s tokens."""
        allowed = self.token.functions.allowance(owner.address, self.settlement.address).call()
        if allowed < amount:
            approve = self.token.functions.approve(self.settlement.address, 2**256 - 1)
            self.send(approve, owner, "approve")

    def block_time_ms(self, block: int) -> int:
        return int(self.w3.eth.get_block(block)["timestamp"]) * 1000
