"""Contracts: the consumer proposes signed terms, the provider countersigns the same terms.

A contract record is ``{"terms": {...}, "consumer_signature": DOC, "provider_signature": DOC}``
where each DOC is an ``identity.documents`` signature of kind ``contract`` over the terms.
"""

from __future__ import annotations

from typing import Any

from computemesh.identity import Identity, sign_document, verify_document
from computemesh.identity.documents import document_digest
from computemesh.models.errors import IdentityError, VerificationError
from computemesh.models.job import JobSpec
from computemesh.models.market import ContractTerms
from computemesh.models.validation import parse_model

CONTRACT_KIND = "contract"


def spec_digest(spec: JobSpec) -> str:
    return document_digest(spec.model_dump(mode="json"))


def propose_contract(consumer: Identity, terms: ContractTerms) -> dict[str, Any]:
    if terms.consumer != consumer.did:
        raise ValueError("the proposer must be the contract's consumer")
    return sign_document(consumer, CONTRACT_KIND, terms.model_dump(mode="json"))


def check_proposal(proposal: object, *, sender: str, provider: str) -> ContractTerms:
    """The terms of a proposal signed by ``sender`` naming ``provider``; else VerificationError."""
    try:
        body = verify_document(proposal, kind=CONTRACT_KIND, signer=sender)
    except IdentityError as exc:
        raise VerificationError(f"contract proposal: {exc.message}", code=exc.code) from exc
    terms = parse_model(ContractTerms, body, what="contract terms")
    if terms.consumer != sender:
        raise VerificationError("contract names another consumer than its signer")
    if terms.provider != provider:
        raise VerificationError("contract names another provider")
    return terms


def countersign(provider: Identity, proposal: dict[str, Any]) -> dict[str, Any]:
    """The full contract record, once the provider has checked the proposal."""
    body = proposal["body"]
    return {
        "terms": body,
        "consumer_signature": proposal,
        "provider_signature": sign_document(provider, CONTRACT_KIND, body),
    }


def verify_contract(record: object) -> ContractTerms:
    """Both signatures over the same terms by the parties the terms name."""
    if not isinstance(record, dict):
        raise VerificationError("a contract must be an object")
    terms = parse_model(ContractTerms, record.get("terms"), what="contract terms")
    for role, signer in (("consumer", terms.consumer), ("provider", terms.provider)):
        try:
            body = verify_document(
                record.get(f"{role}_signature"), kind=CONTRACT_KIND, signer=signer
            )
        except IdentityError as exc:
            raise VerificationError(f"{role} signature: {exc.message}", code=exc.code) from exc
        if body != record["terms"]:
            raise VerificationError(f"the {role} signed other terms")
    return terms
