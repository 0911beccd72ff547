"""The commit phase: turn a provider's bid into a contract both sides signed.

The consumer signs the contract's terms (the bid's rates, the spec's digest and maximum
charge, the latest verified checkpoint to resume from), locks the escrow when payments are
configured, and sends the proposal with the spec; the provider checks everything,
reserves capacity and countersigns. The contract is stored only once the countersigned
terms verify and equal the proposed ones; its capacity is then promised in the mesh view.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from computemesh.actor import behaviours
from computemesh.identity.did import abbreviate_did
from computemesh.matching import max_charge
from computemesh.models.errors import VerificationError
from computemesh.models.job import JobSpec
from computemesh.models.market import Bid, ContractTerms
from computemesh.models.validation import parse_job_spec
from computemesh.orchestrator.bids import new_id
from computemesh.orchestrator.payments import escrow_for_commit
from computemesh.protocol import propose_contract, spec_digest, verify_contract

if TYPE_CHECKING:
    from computemesh.orchestrator.orchestrator import Orchestrator

log = logging.getLogger(__name__)


async def contract_bid(
    orchestrator: Orchestrator, job_id: str, provider: str, bid: Bid
) -> dict[str, Any]:
    """Contract the job with ``provider`` on its ``bid``; its capacity is promised."""
    spec = parse_job_spec(orchestrator.jobs.get(job_id).spec)
    contract = await sign_contract(orchestrator, job_id, spec, provider, bid)
    orchestrator.view.promise(
        contract["terms"]["contract_id"], provider, spec.resources, time.monotonic()
    )
    if orchestrator.jobs.get(job_id).is_final:  # cancelled while the commit was in flight
        await orchestrator.cancel_allocation(contract["terms"])
    return contract


async def sign_contract(
    orchestrator: Orchestrator, job_id: str, spec: JobSpec, provider: str, bid: Bid
) -> dict[str, Any]:
    """Propose the contract, have ``provider`` countersign it and store it.

    A commit that fails (refused, unanswered within ``commit_timeout_s``, other terms
    countersigned: VerificationError) raises, and the escrow locked for it is refunded
    (``escrow_for_commit``).
    """
    actor = orchestrator.actor
    terms = ContractTerms(
        contract_id=new_id(),
        job_id=job_id,
        consumer=actor.did,
        provider=provider,
        spec_sha256=spec_digest(spec),
        **bid.rates.model_dump(),
        max_charge=max_charge(spec, bid.rates),
        created_at_ms=int(time.time() * 1000),
        resume_from=orchestrator.checkpoints.latest_digest(job_id),
    )
    orchestrator.results.expect(terms.contract_id)
    with escrow_for_commit(orchestrator.payments, terms, spec):
        reply = await actor.request(
            provider,
            behaviours.COMMIT,
            {
                "proposal": propose_contract(actor.identity, terms),
                "spec": spec.model_dump(mode="json"),
            },
            timeout=orchestrator.settings.commit_timeout_s,
        )
        contract = reply.get("contract")
        signed = verify_contract(contract)
        if signed != terms:
            raise VerificationError("the provider countersigned other terms")
        assert isinstance(contract, dict)
        orchestrator.jobs.add_contract(job_id, contract)
    log.info("job %s contracted to %s", job_id, abbreviate_did(provider))
    return contract
