"""The consumer's side of settlement: escrow per contract, payment per verified result.

Order of a paid job:

1. ``lock`` the contract's whole ``max_charge`` in escrow *before* the COMMIT is sent (the
   provider checks the escrow before it countersigns); if the commit does not go through,
   ``refund`` at once (``escrow_for_commit`` does both around the commit);
2. when the job is judged (``settle_outcome``): each contract of a completed, verified job
   gets a final ``release_verified`` of the price of its signed usage
   (``settlement.pricing``), split provider / treasury / model creator (the spec's
   ``model_creator``) by the ledger, the rest of the escrow refunded; a result the
   verification policy proved wrong (``Outcome.lost``) is never paid, its escrow refunded;
   a failed or unverified job is refunded in full;
3. a contract the job dropped for another provider's (relocation, migration) keeps its
   escrow while it has a checkpoint the job may resume from; once the job is final,
   ``settle_superseded`` pays it for the checkpoint a verified result built on
   (``release_checkpoint``: the price of the usage signed into the checkpoint, the rest
   refunded) or refunds it in full (``orchestrator.progress`` says which).

Every movement is idempotent on the ledger: a lock and a refund by contract id, a release by
the result id (the SHA-256 of the signed result or checkpoint document), so a result that
arrives twice, or a judgement repeated after a restart, never pays twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from computemesh.identity import Identity, document_digest
from computemesh.identity.did import abbreviate_did
from computemesh.models.job import JobSpec
from computemesh.models.market import Checkpoint, ContractTerms, JobResult
from computemesh.models.validation import parse_model
from computemesh.orchestrator.outcome import Outcome
from computemesh.orchestrator.progress import CheckpointByDigest, verified_progress
from computemesh.settlement import (
    EscrowTerms,
    Ledger,
    Receipt,
    SettlementError,
    attest_result,
    format_credits,
)
from computemesh.settlement.pricing import charge_for_usage

log = logging.getLogger(__name__)


class Payments:
    """Escrow and payments for the contracts one consumer (``verifier``) makes.

    ``verifier`` is the consumer's identity: it signs the attestation of each verified
    result it pays. Methods raise ``SettlementError`` when the ledger refuses.
    """

    def __init__(self, *, ledger: Ledger, verifier: Identity) -> None:
        self.ledger = ledger
        self.verifier = verifier

    def lock(self, terms: ContractTerms, spec: JobSpec) -> Receipt:
        """Lock ``max_charge`` of the consumer's for the contract (``insufficient_funds``)."""
        escrow = EscrowTerms.from_contract(terms, creator=spec.model_creator)
        receipt = self.ledger.lock(escrow)
        log.info(
            "contract %s: %s credits in escrow", terms.contract_id, format_credits(escrow.amount)
        )
        return receipt

    def refund(self, contract_id: str) -> Receipt | None:
        """Close the escrow, returning what is left; None when it was settled already."""
        try:
            receipt = self.ledger.refund(contract_id)
        except SettlementError as exc:
            if exc.code != "escrow_closed":
                raise
            return None
        log.info("contract %s: %s credits refunded", contract_id, format_credits(receipt.refund))
        return receipt

    def release_verified(self, terms: ContractTerms, document: Mapping[str, Any]) -> Receipt:
        """Pay a verified final result the price of its signed usage; refund the rest.

        ``document`` is the provider's signed ``job-result`` for ``terms``, already verified.
        """
        result = parse_model(JobResult, document.get("body"), what="job result")
        amount = charge_for_usage(result.usage, terms)
        return self._release(terms, document, amount, final=True)

    def release_checkpoint(self, terms: ContractTerms, document: Mapping[str, Any]) -> Receipt:
        """Pay a dropped contract for its checkpoint that proved verified progress: the
        price of the usage its provider signed into it; refund the rest.

        ``document`` is the provider's signed ``checkpoint`` for ``terms``, verified when
        it was stored. Raises SettlementError (``unverified_result``) for a checkpoint of
        another contract or signer; a retry replays the first receipt (its id is the
        SHA-256 of the document), so no checkpoint is paid twice.
        """
        checkpoint = parse_model(Checkpoint, document.get("body"), what="checkpoint")
        if checkpoint.contract_id != terms.contract_id or document.get("signer") != terms.provider:
            raise SettlementError(
                f"checkpoint {checkpoint.sha256[:12]} is not one of contract {terms.contract_id}",
                code="unverified_result",
            )
        amount = charge_for_usage(checkpoint.usage, terms)
        return self._release(terms, document, amount, final=True)

    def settle_superseded(
        self, superseded: Sequence[Mapping[str, Any]], progress: Mapping[str, Mapping[str, Any]]
    ) -> list[Receipt]:
        """Close the escrow of each contract a job dropped, once the job is final: paid for
        its checkpoint in ``progress`` (``orchestrator.progress.verified_progress``), else
        refunded. Escrows closed already are left as they are; a refusal is logged and the
        other contracts still settle."""

        def settle(terms: ContractTerms) -> Receipt | None:
            checkpoint = progress.get(terms.contract_id)
            if checkpoint is None:
                return self.refund(terms.contract_id)
            return self.release_checkpoint(terms, checkpoint)

        return _settle_each(superseded, settle)

    def open_escrows(self) -> dict[str, str]:
        """This consumer's escrows that no final release or refund closed yet: the job id
        of each, by contract id (from the ledger's receipts, oldest first)."""
        receipts = self.ledger.history(self.verifier.did)
        closed = {
            receipt.body.get("contract_id")
            for receipt in receipts
            if receipt.op == "refund" or (receipt.op == "release" and receipt.body.get("final"))
        }
        return {
            str(receipt.body["contract_id"]): str(receipt.body["job_id"])
            for receipt in receipts
            if receipt.op == "lock"
            and receipt.did == self.verifier.did
            and receipt.body["contract_id"] not in closed
        }

    def settle_job(
        self,
        held: Sequence[Mapping[str, Any]],
        superseded: Sequence[Mapping[str, Any]],
        outcome: Outcome,
        checkpoint_by_digest: CheckpointByDigest,
    ) -> list[Receipt]:
        """Settle every escrow of a job judged final: the contracts it holds as the outcome
        says (``settle_outcome``), the ones it dropped for their verified progress
        (``settle_superseded``); nothing before the job is final."""
        if not outcome.final:
            return []
        progress = verified_progress(outcome, held, superseded, checkpoint_by_digest)
        return [
            *self.settle_outcome(held, outcome),
            *self.settle_superseded(superseded, progress),
        ]

    def settle_outcome(
        self, contracts: Sequence[Mapping[str, Any]], outcome: Outcome
    ) -> list[Receipt]:
        """Pay or refund every contract of a job judged final; nothing before that.

        A completed, verified job pays each of its results except those the verification
        policy proved wrong (``outcome.lost``); otherwise, and for a lost contract or one
        with no result among the outcome's, the escrow is refunded. A refusal is logged and
        the other contracts still settle.
        """
        if not outcome.final:
            return []
        pays = outcome.status == "completed" and outcome.verified
        lost = set(outcome.lost)
        results = {
            document["body"]["contract_id"]: document
            for document in outcome.results
            if document["body"]["contract_id"] not in lost
        }

        def settle(terms: ContractTerms) -> Receipt | None:
            document = results.get(terms.contract_id)
            if not pays or document is None:
                return self.refund(terms.contract_id)
            return self.release_verified(terms, document)

        return _settle_each(contracts, settle)

    def _release(
        self, terms: ContractTerms, document: Mapping[str, Any], amount: int, *, final: bool
    ) -> Receipt:
        attested = attest_result(
            self.verifier,
            contract_id=terms.contract_id,
            result_id=document_digest(document),
            amount=amount,
            final=final,
        )
        receipt = self.ledger.release(attested)
        log.info(
            "contract %s: paid %s credits to %s%s",
            terms.contract_id,
            format_credits(receipt.amount),
            abbreviate_did(terms.provider),
            f", refunded {format_credits(receipt.refund)}" if final else "",
        )
        return receipt


@contextmanager
def escrow_for_commit(
    payments: Payments | None, terms: ContractTerms, spec: JobSpec
) -> Iterator[None]:
    """Lock the escrow before the commit inside; refund it at once if the commit fails."""
    if payments is None:
        yield
        return
    payments.lock(terms, spec)
    try:
        yield
    except BaseException:
        try:
            payments.refund(terms.contract_id)
        except SettlementError as exc:
            log.error("contract %s: refund failed: %s", terms.contract_id, exc.message)
        raise


def _terms_of(contract: Mapping[str, Any]) -> ContractTerms:
    return parse_model(ContractTerms, contract.get("terms"), what="contract terms")


def _settle_each(
    contracts: Sequence[Mapping[str, Any]], settle: Callable[[ContractTerms], Receipt | None]
) -> list[Receipt]:
    """``settle`` each contract in turn; a refusal is logged and the others still settle."""
    receipts: list[Receipt] = []
    for terms in map(_terms_of, contracts):
        try:
            receipt = settle(terms)
        except SettlementError as exc:
            log.error("contract %s not settled: %s", terms.contract_id, exc.message)
            continue
        if receipt is not None:
            receipts.append(receipt)
    return receipts
