"""``Ledger`` on an EVM chain: a web3.py client over the Vyper settlement contract.

Accounts are chain addresses bound to DIDs on chain (``bind``). The client signs with the
keys it holds: an account's own key, or an operator key the account approved with
``set_operator``; slashing needs the deployment's arbiter key. Deposits come from the
operator's tokens. Receipts are signed by ``author`` and anchored to the transaction.

Ids become bytes32 as ``chain_key(kind, id)``. The chain refuses what the embedded ledger
refuses (a revert, translated to the same error code); this client checks first where it
can, so a refused item of a batch raises before anything is sent. A retried operation is
answered from the receipt store, or rebuilt from the chain's logs: never paid twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from computemesh.identity import Identity, canonical_json
from computemesh.settlement.amounts import Split
from computemesh.settlement.batch import MAX_JOB_AMOUNT, BatchItem, JobState, plan_batches
from computemesh.settlement.bindings import AccountBinding
from computemesh.settlement.chain_accounts import ChainAccounts, require_available
from computemesh.settlement.chain_book import ChainBook, conflict, log_anchor, tx_anchor
from computemesh.settlement.chain_events import JobRef, find_job, find_log, job_payments, job_state
from computemesh.settlement.chain_receipts import check_chain_receipt
from computemesh.settlement.errors import SettlementError
from computemesh.settlement.receipt_store import ReceiptStore
from computemesh.settlement.receipts import Receipt
from computemesh.settlement.records import (
    Balance,
    EscrowState,
    EscrowTerms,
    FraudRecord,
    VerifiedResult,
    check_contract_id,
    check_did,
    check_verified_result,
)
from computemesh.settlement.settings import LedgerSettings
from computemesh.settlement.transactions import ZERO_ADDRESS, ChainClient, chain_key


class EvmLedger:
    """``Ledger`` over a deployed settlement contract (see the module docstring)."""

    def __init__(
        self,
        client: ChainClient,
        *,
        author: Identity,
        settings: LedgerSettings,
        store: ReceiptStore | None = None,
    ) -> None:
        if settings.split != client.deployment.split:
            raise SettlementError(
                "the settings' split differs from the deployment's", code="settings_mismatch"
            )
        self._client = client
        self._settlement = client.settlement
        self._settings = settings
        self._book = ChainBook(client, author, settings.treasury, store or ReceiptStore())
        self._accounts = ChainAccounts(client, self._book, settings)

    @property
    def split(self) -> Split:
        return self._settings.split

    @property
    def treasury(self) -> str:
        return self._settings.treasury

    @property
    def settings(self) -> LedgerSettings:
        return self._settings

    @property
    def client(self) -> ChainClient:
        return self._client

    # accounts -----------------------------------------------------------------------------

    def address_of(self, did: str) -> str | None:
        """The address bound to ``did`` on chain, or None."""
        return self._book.address_of(did)

    def bind_account(self, binding: AccountBinding) -> Receipt:
        return self._accounts.bind_account(binding)

    def deposit(self, did: str, amount: int, *, deposit_id: str) -> Receipt:
        return self._accounts.deposit(did, amount, deposit_id=deposit_id)

    def stake(self, did: str, amount: int, *, stake_id: str) -> Receipt:
        return self._accounts.stake(did, amount, stake_id=stake_id)

    def slash(self, fraud: FraudRecord) -> Receipt:
        return self._accounts.slash(fraud)

    # escrow -------------------------------------------------------------------------------

    def lock(self, escrow: EscrowTerms) -> Receipt:
        request = escrow.to_dict()
        op_id = f"lock:{escrow.contract_id}"
        if (replayed := self._book.replay(op_id, request)) is not None:
            return replayed
        if escrow.amount > MAX_JOB_AMOUNT:
            raise SettlementError(
                f"one job locks at most {MAX_JOB_AMOUNT} units on chain", code="bad_amount"
            )
        payer = self._book.require_address(escrow.consumer)
        job = find_job(self._client, escrow.contract_id)
        if job is not None:
            if (job.payer, job.locked) != (payer, escrow.amount):
                raise conflict(op_id)
            anchor = {"tx": job.tx, "block": job.block}
        else:
            anchor = self._send_lock(escrow, payer)
        body = {
            "did": escrow.consumer,
            "amount": escrow.amount,
            "contract_id": escrow.contract_id,
            "job_id": escrow.job_id,
            "payees": {"provider": escrow.provider, "creator": escrow.creator},
        }
        return self._book.issue(
            "lock", op_id, request, body, anchor, [escrow.consumer, escrow.provider]
        )

    def release(self, result: VerifiedResult) -> Receipt:
        """One transaction for one result (``release_many`` batches final results)."""
        check_verified_result(result)
        op_id = f"release:{result.result_id}"
        if (replayed := self._book.replay(op_id, result.fields())) is not None:
            return replayed
        job = self._job(result.contract_id)
        self._check_verifier(result.verifier, job)
        key = chain_key("result", result.result_id)
        if self._settlement.functions.results(key).call():
            log = find_log(self._client, "Released", {"result_id": key})
            args = log["args"]
            if (args["index"], args["amount"], args["final"]) != (
                job.index,
                result.amount,
                result.final,
            ):
                raise conflict(op_id)
            return self._release_receipt(result, job, int(args["refund"]), log_anchor(log))
        state = job_state(self._client, job.payer, job.index)
        if state.settled:
            return self._settled_replay(result, job)
        _check_within(result, state)
        function = self._settlement.functions.release(
            job.payer, job.index, key, result.amount, result.final
        )
        tx = self._client.send(function, self._client.signer_for(job.payer), "release")
        refund = state.remaining - result.amount if result.final else 0
        return self._release_receipt(result, job, refund, tx_anchor(tx))

    def release_many(self, results: Sequence[VerifiedResult]) -> list[Receipt]:
        """Non-final results one by one; final ones settled in batches per payer."""
        for result in results:
            check_verified_result(result)
        receipts: dict[str, Receipt] = {}
        batched: dict[str, list[tuple[VerifiedResult, JobRef, JobState]]] = {}
        for result in _unique(results):
            op_id = f"release:{result.result_id}"
            replayed = self._book.replay(op_id, result.fields())
            if replayed is not None:
                receipts[result.result_id] = replayed
            elif not result.final:
                receipts[result.result_id] = self.release(result)
            else:
                job = self._job(result.contract_id)
                self._check_verifier(result.verifier, job)
                state = job_state(self._client, job.payer, job.index)
                if state.settled:
                    receipts[result.result_id] = self._settled_replay(result, job)
                    continue
                _check_within(result, state)
                pending = batched.setdefault(job.payer, [])
                if any(other.index == job.index for _, other, _ in pending):
                    raise SettlementError(
                        f"two final results for contract {result.contract_id}",
                        code="escrow_closed",
                    )
                pending.append((result, job, state))
        for payer, pending in batched.items():
            receipts.update(self._settle(payer, pending))
        return [receipts[result.result_id] for result in results]

    def refund(self, contract_id: str) -> Receipt:
        check_contract_id(contract_id)
        op_id = f"refund:{contract_id}"
        request = {"contract_id": contract_id}
        if (replayed := self._book.replay(op_id, request)) is not None:
            return replayed
        job = self._job(contract_id)
        if job_state(self._client, job.payer, job.index).settled:
            log = find_log(self._client, "Refunded", {"payer": job.payer, "index": job.index})
            if log is None:
                raise SettlementError(
                    f"the escrow of {contract_id} is settled", code="escrow_closed"
                )
            amount, anchor = int(log["args"]["amount"]), log_anchor(log)
        else:
            function = self._settlement.functions.refund(job.payer, job.index)
            tx = self._client.send(function, self._client.signer_for(job.payer), "refund")
            event = self._settlement.events.Refunded().process_receipt(tx)[0]
            amount, anchor = int(event["args"]["amount"]), tx_anchor(tx)
        consumer = self._book.did_for(job.payer)
        body = {"did": consumer, "amount": 0, "refund": amount, "contract_id": contract_id}
        return self._book.issue("refund", op_id, request, body, anchor, [consumer])

    # queries ------------------------------------------------------------------------------

    def balance(self, did: str) -> Balance:
        check_did(did)
        address = self._book.address_of(did)
        if address is None:
            return Balance(did=did, available=0, escrowed=0, staked=0)
        functions = self._settlement.functions
        return Balance(
            did=did,
            available=functions.balances(address).call(),
            escrowed=functions.escrowed(address).call(),
            staked=functions.staked(address).call(),
        )

    def escrow(self, contract_id: str) -> EscrowState:
        check_contract_id(contract_id)
        job = self._job(contract_id)
        payments = job_payments(self._client, job)
        provider, creator = self._settlement.functions.payee_sets(job.payee_set).call()
        creator_did = (
            None if creator == self._client.deployment.treasury else self._book.did_for(creator)
        )
        return EscrowState(
            contract_id=contract_id,
            consumer=self._book.did_for(job.payer),
            provider=self._book.did_for(provider),
            creator=creator_did,
            locked=job.locked,
            released=sum(p.amount for p in payments),
            refunded=sum(p.refund for p in payments),
            closed=job_state(self._client, job.payer, job.index).settled,
        )

    def history(self, did: str) -> list[Receipt]:
        return self._book.history(did)

    def check_receipt(self, document: Mapping[str, Any]) -> Receipt:
        """The receipt once signed by this client's author and matching the chain
        (``chain_receipts.check_chain_receipt``); ``bad_receipt`` otherwise."""
        return check_chain_receipt(self._client, self._book, self.split, document)

    # internals ----------------------------------------------------------------------------

    def _settle(
        self, payer: str, pending: list[tuple[VerifiedResult, JobRef, JobState]]
    ) -> dict[str, Receipt]:
        by_index = {job.index: (result, job, state) for result, job, state in pending}
        items = [BatchItem(job.index, r.amount, state.payee_set) for r, job, state in pending]
        signer = self._client.signer_for(payer)
        receipts = {}
        for call in plan_batches(items):
            settled = [by_index[item.index] for item in call.items]
            ref = hashlib.sha256(canonical_json([r.result_id for r, _, _ in settled])).digest()
            function = self._settlement.functions.settle_batch(
                payer, call.first, call.count, call.payees, call.entries, ref
            )
            anchor = tx_anchor(self._client.send(function, signer, "settle_batch"))
            for result, job, state in settled:
                refund = state.remaining - result.amount
                receipts[result.result_id] = self._release_receipt(result, job, refund, anchor)
        return receipts

    def _settled_replay(self, result: VerifiedResult, job: JobRef) -> Receipt:
        """A final result for a settled job: the same payment again, or a refusal."""
        for payment in job_payments(self._client, job):
            if payment.batched and result.final and payment.amount == result.amount:
                anchor = {"tx": payment.tx, "block": payment.block}
                return self._release_receipt(result, job, payment.refund, anchor)
        raise SettlementError(
            f"the escrow of {result.contract_id} is settled", code="escrow_closed"
        )

    def _release_receipt(
        self, result: VerifiedResult, job: JobRef, refund: int, anchor: dict[str, Any]
    ) -> Receipt:
        shares = self.split.shares(result.amount)
        provider, creator = self._settlement.functions.payee_sets(job.payee_set).call()
        consumer = self._book.did_for(job.payer)
        body = {
            "did": consumer,
            "amount": result.amount,
            "contract_id": result.contract_id,
            "result_id": result.result_id,
            "final": result.final,
            "shares": {
                "provider": shares.provider,
                "treasury": shares.treasury,
                "creator": shares.creator,
            },
            "payees": {
                "provider": self._book.did_for(provider),
                "treasury": self.treasury,
                "creator": self._book.did_for(creator),
            },
            "refund": refund,
        }
        parties = [consumer, self._book.did_for(provider)]
        return self._book.issue(
            "release", f"release:{result.result_id}", result.fields(), body, anchor, parties
        )

    def _send_lock(self, escrow: EscrowTerms, payer: str) -> dict[str, Any]:
        require_available(self._client, payer, escrow.amount, "locking")
        provider = self._book.require_address(escrow.provider)
        creator = self._book.require_address(escrow.creator) if escrow.creator else ZERO_ADDRESS
        function = self._settlement.functions.lock(
            payer, chain_key("contract", escrow.contract_id), provider, creator, escrow.amount
        )
        return tx_anchor(self._client.send(function, self._client.signer_for(payer), "lock"))

    def _job(self, contract_id: str) -> JobRef:
        job = find_job(self._client, contract_id)
        if job is None:
            raise SettlementError(f"no escrow for contract {contract_id}", code="unknown_escrow")
        return job

    def _check_verifier(self, verifier: str, job: JobRef) -> None:
        if verifier in self._settings.verifiers or self._book.address_of(verifier) == job.payer:
            return
        raise SettlementError(
            f"{verifier} may not attest results of this contract",
            code="unverified_result",
            hint="the contract's consumer or a verifier named in the ledger settings signs",
        )


def _check_within(result: VerifiedResult, state: JobState) -> None:
    if result.amount > state.remaining:
        raise SettlementError(
            f"releasing {result.amount} units exceeds the {state.remaining} left in escrow",
            code="exceeds_escrow",
        )


def _unique(results: Sequence[VerifiedResult]) -> list[VerifiedResult]:
    seen: dict[str, VerifiedResult] = {}
    for result in results:
        earlier = seen.setdefault(result.result_id, result)
        if earlier.fields() != result.fields():
            raise conflict(f"release:{result.result_id}")
    return list(seen.values())
