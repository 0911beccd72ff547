"""Accounts on chain: bindings, deposits, stake and slashing (for ``EvmLedger``).

Each operation is answered from the receipt book when its id was seen, rebuilt from the
chain's log when the chain already applied it, and sent otherwise.
"""

from __future__ import annotations

from typing import Any

from computemesh.settlement.amounts import check_amount
from computemesh.settlement.bindings import AccountBinding, check_binding
from computemesh.settlement.chain_book import ChainBook, conflict, log_anchor, tx_anchor
from computemesh.settlement.chain_events import find_log
from computemesh.settlement.errors import SettlementError
from computemesh.settlement.receipts import Receipt
from computemesh.settlement.records import (
    FraudRecord,
    check_did,
    check_fraud_record,
    check_operation_id,
)
from computemesh.settlement.settings import LedgerSettings
from computemesh.settlement.transactions import ZERO_ADDRESS, ChainClient, chain_key, did_hash


class ChainAccounts:
    """The account operations of one chain client."""

    def __init__(self, client: ChainClient, book: ChainBook, settings: LedgerSettings) -> None:
        self._client = client
        self._settlement = client.settlement
        self._book = book
        self._settings = settings

    def bind_account(self, binding: AccountBinding) -> Receipt:
        check_binding(binding)
        request = {"did": binding.did, "address": binding.address}
        op_id = f"bind:{binding.did}:{binding.address}"
        if (replayed := self._book.replay(op_id, request)) is not None:
            return replayed
        hashed = did_hash(binding.did)
        if self._settlement.functions.did_of(binding.address).call() == hashed:
            log = find_log(self._client, "Bound", {"account": binding.address, "did_hash": hashed})
            anchor = log_anchor(log)
        else:
            function = self._settlement.functions.bind(hashed)
            anchor = tx_anchor(
                self._client.send(function, self._client.key(binding.address), "bind")
            )
        self._book.remember(binding.did, binding.address)
        body = {"did": binding.did, "amount": 0, "address": binding.address}
        return self._book.issue("bind", op_id, request, body, anchor, [binding.did])

    def deposit(self, did: str, amount: int, *, deposit_id: str) -> Receipt:
        check_did(did)
        check_amount(amount, what="deposit")
        check_operation_id(deposit_id, what="deposit id")
        request = {"did": did, "amount": amount}
        op_id = f"deposit:{deposit_id}"
        if (replayed := self._book.replay(op_id, request)) is not None:
            return replayed
        address = self._book.require_address(did)
        key = chain_key("deposit", deposit_id)
        if self._settlement.functions.deposits(key).call():
            log = find_log(self._client, "Deposited", {"deposit_id": key})
            if (log["args"]["beneficiary"], log["args"]["amount"]) != (address, amount):
                raise conflict(op_id)
            anchor = log_anchor(log)
        else:
            funder = self._client.operator
            if funder is None:
                raise SettlementError("no operator key to deposit from", code="not_authorized")
            self._client.ensure_allowance(funder, amount)
            function = self._settlement.functions.deposit(address, amount, key)
            anchor = tx_anchor(self._client.send(function, funder, "deposit"))
        return self._book.issue(
            "deposit", op_id, request, {"did": did, "amount": amount}, anchor, [did]
        )

    def stake(self, did: str, amount: int, *, stake_id: str) -> Receipt:
        check_did(did)
        check_amount(amount, what="stake")
        check_operation_id(stake_id, what="stake id")
        request = {"did": did, "amount": amount}
        op_id = f"stake:{stake_id}"
        if (replayed := self._book.replay(op_id, request)) is not None:
            return replayed
        address = self._book.require_address(did)
        key = chain_key("stake", stake_id)
        if self._settlement.functions.stakes(key).call():
            log = find_log(self._client, "Staked", {"stake_id": key})
            if (log["args"]["provider"], log["args"]["amount"]) != (address, amount):
                raise conflict(op_id)
            anchor = log_anchor(log)
        else:
            require_available(self._client, address, amount, "staking")
            function = self._settlement.functions.stake(address, amount, key)
            anchor = tx_anchor(
                self._client.send(function, self._client.signer_for(address), "stake")
            )
        return self._book.issue(
            "stake", op_id, request, {"did": did, "amount": amount}, anchor, [did]
        )

    def slash(self, fraud: FraudRecord) -> Receipt:
        check_fraud_record(fraud, arbiters=self._settings.arbiters)
        op_id = f"slash:{fraud.fraud_id}"
        if (replayed := self._book.replay(op_id, fraud.fields())) is not None:
            return replayed
        provider = self._book.require_address(fraud.provider)
        key = chain_key("fraud", fraud.fraud_id)
        reported, _evidence, slashed = self._settlement.functions.frauds(key).call()
        if slashed:
            log = find_log(self._client, "Slashed", {"fraud_id": key})
            if (log["args"]["provider"], log["args"]["amount"]) != (provider, fraud.amount):
                raise conflict(op_id)
            anchor = log_anchor(log)
        else:
            anchor = self._send_slash(fraud, key, provider, reported)
        body = {
            "did": fraud.provider,
            "amount": fraud.amount,
            "fraud_id": fraud.fraud_id,
            "contract_id": fraud.contract_id,
            "evidence": list(fraud.evidence),
        }
        return self._book.issue(
            "slash", op_id, fraud.fields(), body, anchor, [fraud.provider, self._settings.treasury]
        )

    def _send_slash(
        self, fraud: FraudRecord, key: bytes, provider: str, reported: str
    ) -> dict[str, Any]:
        arbiter = self._client.key(self._client.deployment.arbiter)
        staked = self._settlement.functions.staked(provider).call()
        if staked < fraud.amount:
            raise SettlementError(
                f"slashing {fraud.amount} units exceeds the stake of {staked}",
                code="exceeds_stake",
            )
        if reported == ZERO_ADDRESS:
            evidence = bytes.fromhex(fraud.evidence_digest)
            report = self._settlement.functions.report_fraud(key, provider, evidence)
            self._client.send(report, arbiter, "report_fraud")
        function = self._settlement.functions.slash(key, fraud.amount)
        return tx_anchor(self._client.send(function, arbiter, "slash"))


def require_available(client: ChainClient, address: str, amount: int, action: str) -> None:
    """``insufficient_funds`` unless ``address`` has ``amount`` available."""
    available = client.settlement.functions.balances(address).call()
    if available < amount:
        raise SettlementError(
            f"{action} {amount} units needs more than the {available} available",
            code="insufficient_funds",
        )
