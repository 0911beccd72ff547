"""Judging a job from its signed results: verified, agreed, and what status it ends in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from computemesh.models.errors import MeshError
from computemesh.models.market import ContractTerms, JobResult
from computemesh.models.validation import parse_job_spec
from computemesh.protocol import verify_contract, verify_result
from computemesh.store import JobRecord, JobRepository


@dataclass(frozen=True)
class Outcome:
    results: list[dict[str, Any]]
    final: bool
    status: str
    verified: bool
    reason: str
    rejected: str = ""
    contract_ids: list[str] = field(default_factory=list)
    more: int = 0
    """Replicas the verification policy wants on other providers before it decides."""
    lost: list[str] = field(default_factory=list)
    """Contracts whose results a quorum proved wrong: never to be paid."""


def stored_outcome(jobs: JobRepository, record: JobRecord) -> Outcome:
    """A final job's outcome as stored: its results, verdict and proven frauds."""
    frauds = jobs.fraud.for_job(record.job_id)
    return Outcome(
        results=record.results,
        final=True,
        status=record.status,
        verified=bool(record.verified),
        reason=record.reason,
        lost=[str(finding["contract_id"]) for finding in frauds],
    )


def result_fingerprint(result: JobResult) -> tuple[object, ...]:
    """What replicas of a deterministic job must agree on."""
    outputs = sorted((item.path, item.sha256) for item in result.outputs)
    return (result.status, result.exit_code, tuple(outputs))


def judge_outcome(record: JobRecord, documents: list[Any]) -> Outcome:
    """Verify every document against the job's contracts and decide where the job stands.

    A document that fails verification, or names a contract this job does not have, is
    reported in ``rejected`` and leaves the stored results as they were. The first valid
    result per contract is kept; later ones are still verified, then ignored.
    """
    spec = parse_job_spec(record.spec)
    contracts: dict[str, ContractTerms] = {}
    for contract in record.contracts:
        signed = verify_contract(contract)
        contracts[signed.contract_id] = signed
    accepted: dict[str, tuple[dict[str, Any], JobResult]] = {}
    for document in documents:
        body = document.get("body") if isinstance(document, dict) else None
        contract_id = body.get("contract_id") if isinstance(body, dict) else None
        found = contracts.get(contract_id) if isinstance(contract_id, str) else None
        if found is None:
            return _rejected(record, "result for a contract this job does not have")
        try:
            result = verify_result(document, terms=found, spec=spec)
        except MeshError as exc:
            return _rejected(record, exc.message)
        accepted.setdefault(found.contract_id, (document, result))
    return _judge(spec.replicas, contracts, accepted)


def _judge(
    replicas: int,
    contracts: dict[str, ContractTerms],
    accepted: dict[str, tuple[dict[str, Any], JobResult]],
) -> Outcome:
    documents = [document for document, _ in accepted.values()]
    results = [result for _, result in accepted.values()]
    ids = list(accepted)
    final = len(contracts) >= replicas and set(contracts) == set(accepted)
    if not final:
        return Outcome(documents, False, "running", False, "", contract_ids=ids)
    failures = [
        f"{r.status}: {r.reason or f'exit code {r.exit_code}'}"
        for r in results
        if r.status != "completed"
    ]
    agreed = len({result_fingerprint(result) for result in results}) == 1
    reason = "; ".join(failures)
    if not agreed:
        reason = "; ".join(filter(None, [reason, "replicas disagree on their outputs"]))
    status = "completed" if not failures else "failed"
    return Outcome(documents, True, status, agreed, reason, contract_ids=ids)


def _rejected(record: JobRecord, why: str) -> Outcome:
    return Outcome(
        record.results, False, record.status, bool(record.verified), record.reason, rejected=why
    )
