"""Verified progress: which checkpoints of dropped contracts a verified result built on.

A contract dropped for another provider's (its host died, the job migrated) leaves its
checkpoints behind, each signed by its provider with the usage up to that snapshot. One
of them is *verified progress* when the job ends completed and verified and a paid
result descends from it: the paid contract resumed from it (``resume_from``), or resumed
from a checkpoint of a contract that resumed from it, and so on. Its provider is then
paid that checkpoint's signed usage at its own contract's rate; every other dropped
contract is refunded. A checkpoint no verified result built on proves nothing and earns
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from computemesh.orchestrator.outcome import Outcome

CheckpointByDigest = Callable[[str], Mapping[str, Any] | None]
"""The signed checkpoint document the consumer stored under a sha256, None if none."""


def verified_progress(
    outcome: Outcome,
    held: Sequence[Mapping[str, Any]],
    superseded: Sequence[Mapping[str, Any]],
    checkpoint_by_digest: CheckpointByDigest,
) -> dict[str, Mapping[str, Any]]:
    """The checkpoint document each dropped contract is paid for, by contract id.

    ``held`` are the job's contracts, ``superseded`` the ones it dropped; only a
    checkpoint of a dropped contract, signed by that contract's provider, counts (the
    furthest one, should replicas have resumed from several). Empty unless the outcome
    is final, completed and verified.
    """
    if not (outcome.final and outcome.status == "completed" and outcome.verified):
        return {}
    dropped = {contract["terms"]["contract_id"]: contract["terms"] for contract in superseded}
    lost = set(outcome.lost)
    paid = {
        document["body"]["contract_id"]
        for document in outcome.results
        if document["body"]["contract_id"] not in lost
    }
    progress: dict[str, Mapping[str, Any]] = {}
    for contract in held:
        if contract["terms"]["contract_id"] not in paid:
            continue
        digest = contract["terms"].get("resume_from")
        while digest is not None:
            document = checkpoint_by_digest(digest)
            if document is None:
                break
            contract_id = document["body"]["contract_id"]
            terms = dropped.get(contract_id)
            if terms is None or document.get("signer") != terms["provider"]:
                break
            known = progress.get(contract_id)
            if known is not None and known["body"]["seq"] >= document["body"]["seq"]:
                break  # reached through another replica already, as far or further
            progress[contract_id] = document
            digest = terms.get("resume_from")
    return progress
