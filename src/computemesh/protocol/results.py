"""Results: signed by the provider, checked by the consumer against the contract and spec."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from computemesh.identity import Identity, sign_document, verify_document
from computemesh.models.errors import IdentityError, SpecError, VerificationError
from computemesh.models.job import JobSpec, sha256_hex
from computemesh.models.market import ContractTerms, JobResult
from computemesh.models.validation import parse_model

RESULT_KIND = "job-result"


def sign_result(provider: Identity, result: JobResult) -> dict[str, Any]:
    if result.provider != provider.did:
        raise ValueError("a result is signed by the provider it names")
    return sign_document(provider, RESULT_KIND, result.model_dump(mode="json"))


def verify_result(document: object, *, terms: ContractTerms, spec: JobSpec) -> JobResult:
    """The result, if signed by the contract's provider and its outputs check.

    Raises VerificationError naming the first problem: signature, contract or job mismatch,
    fuel that does not fit the executor (``fuel_problem``), an output the spec did not ask
    for, or an output whose bytes do not hash to what was signed.
    """
    try:
        body = verify_document(document, kind=RESULT_KIND, signer=terms.provider)
        result = parse_model(JobResult, body, what="job result")
    except (IdentityError, SpecError) as exc:
        raise VerificationError(f"result: {exc.message}", code="bad_result") from exc
    if result.provider != terms.provider:
        raise VerificationError("result names another provider than its signer")
    if (result.contract_id, result.job_id) != (terms.contract_id, terms.job_id):
        raise VerificationError("result belongs to another contract or job")
    problem = fuel_problem(result, spec)
    if problem is not None:
        raise VerificationError(problem, code="bad_result")
    declared = set(spec.outputs)
    for output in result.outputs:
        if output.path not in declared:
            raise VerificationError(f"output {output.path} was not asked for")
        if output.content_b64 is not None:
            _check_output_bytes(output.path, output.content_b64, output.sha256, output.size)
    return result


def fuel_problem(result: JobResult, spec: JobSpec) -> str | None:
    """Why the fuel ``result`` reports cannot be true for ``spec``; None when it can.

    Fuel is what a wasm result is priced by (``settlement.pricing``): only wasm jobs count
    it, a wasm guest that ran to its end always has it, and it never exceeds the budget.
    """
    fuel, budget = result.usage.fuel, spec.fuel_limit()
    if budget is None:
        return None if fuel is None else f"a {spec.executor} job reports wasm fuel"
    if fuel is None:
        ran_to_end = result.status == "completed" or result.exit_code is not None
        return "a wasm result that ran to its end reports no fuel" if ran_to_end else None
    if fuel > budget:
        return f"reports {fuel} fuel, more than the job's budget of {budget}"
    return None


def _check_output_bytes(path: str, content_b64: str, sha256: str, size: int) -> None:
    try:
        data = base64.b64decode(content_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError(f"output {path} is not valid base64") from exc
    if len(data) != size or sha256_hex(data) != sha256:
        raise VerificationError(f"output {path} does not match its signed sha256")
