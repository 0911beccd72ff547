"""What a chain client knows beyond the chain: whose address is whose, what it signed.

The chain binds addresses to DID hashes; ``ChainBook`` keeps the DIDs themselves (learned
from bindings and look-ups) and issues, stores and replays the client's signed receipts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from web3 import Web3
from web3.types import TxReceipt

from computemesh.identity import Identity, canonical_json
from computemesh.settlement.errors import SettlementError
from computemesh.settlement.receipt_store import ReceiptStore
from computemesh.settlement.receipts import Receipt, issue_receipt
from computemesh.settlement.transactions import ZERO_ADDRESS, ChainClient, did_hash


class ChainBook:
    """DIDs of addresses and receipts by op id, for one client of one deployment."""

    def __init__(
        self, client: ChainClient, author: Identity, treasury: str, store: ReceiptStore
    ) -> None:
        self._client = client
        self._author = author
        self._treasury = treasury
        self._store = store
        self._addresses: dict[str, str] = {}
        self._dids: dict[str, str] = {}

    @property
    def author(self) -> str:
        """The DID that signs this client's receipts: the settlement authority they need."""
        return self._author.did

    @property
    def treasury(self) -> str:
        return self._treasury

    def address_of(self, did: str) -> str | None:
        """The address bound to ``did`` on chain, or None."""
        if did not in self._addresses:
            bound = self._client.settlement.functions.account_of(did_hash(did)).call()
            if bound == ZERO_ADDRESS:
                return None
            self.remember(did, Web3.to_checksum_address(bound))
        return self._addresses[did]

    def require_address(self, did: str) -> str:
        """``address_of``, or ``SettlementError`` (``unknown_account``)."""
        address = self.address_of(did)
        if address is None:
            raise SettlementError(
                f"{did} has no chain account", code="unknown_account", hint="bind_account first"
            )
        return address

    def remember(self, did: str, address: str) -> None:
        self._addresses[did] = address
        self._dids[address] = did

    def did_for(self, address: str) -> str:
        """The DID bound to ``address`` when known here; the address itself otherwise."""
        if address == self._client.deployment.treasury:
            return self._treasury
        return self._dids.get(address, address)

    def replay(self, op_id: str, request: dict[str, Any]) -> Receipt | None:
        """The receipt already issued for ``op_id``; ``conflicting_retry`` if the request
        differs from the one it answered."""
        stored = self._store.get(op_id)
        if stored is None:
            return None
        if stored[0] != normalised(request):
            raise conflict(op_id)
        return stored[1]

    def stored(self, op_id: str) -> Receipt | None:
        stored = self._store.get(op_id)
        return None if stored is None else stored[1]

    def history(self, did: str) -> list[Receipt]:
        return self._store.for_did(did)

    def issue(
        self,
        op: str,
        op_id: str,
        request: dict[str, Any],
        body: dict[str, Any],
        anchor: dict[str, Any],
        parties: Sequence[str | None],
    ) -> Receipt:
        """Sign a receipt anchored at ``anchor`` (tx and block), timed by the block."""
        deployment = self._client.deployment
        full_anchor = {
            "backend": "evm",
            "chain_id": deployment.chain_id,
            "contract": deployment.settlement,
            **anchor,
        }
        at_ms = self._client.block_time_ms(anchor["block"])
        receipt = issue_receipt(
            self._author, {**body, "op": op, "op_id": op_id, "anchor": full_anchor, "at_ms": at_ms}
        )
        self._store.put(receipt, normalised(request), parties)
        return receipt


def normalised(request: dict[str, Any]) -> dict[str, Any]:
    normal: dict[str, Any] = json.loads(canonical_json(request))
    return normal


def conflict(op_id: str) -> SettlementError:
    return SettlementError(
        f"{op_id} was applied before with other content", code="conflicting_retry"
    )


def tx_anchor(receipt: TxReceipt) -> dict[str, Any]:
    return {
        "tx": "0x" + bytes(receipt["transactionHash"]).hex(),
        "block": int(receipt["blockNumber"]),
    }


def log_anchor(log: Any) -> dict[str, Any]:
    return {"tx": "0x" + bytes(log["transactionHash"]).hex(), "block": int(log["blockNumber"])}
