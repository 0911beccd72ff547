"""Signed agreements between participants: contracts both sides sign, results providers sign.

Both the provider (``node``) and the consumer (``orchestrator``) check these documents, so
the checks live here, once.
"""

from computemesh.protocol.contracts import (
    check_proposal,
    countersign,
    propose_contract,
    spec_digest,
    verify_contract,
)
from computemesh.protocol.results import sign_result, verify_result

__all__ = [
    "check_proposal",
    "countersign",
    "propose_contract",
    "sign_result",
    "spec_digest",
    "verify_contract",
    "verify_result",
]
