"""Checkpoints: an archive of a job's checkpoint directory, signed by the provider that made it.

On the wire a checkpoint is ``{"checkpoint": DOC, "archive_b64": "<base64>"}`` where DOC is
a document of kind ``checkpoint`` over a ``Checkpoint`` body naming the archive's sha256 and
size. Whoever receives one (the consumer storing it, a node about to restore it) checks the
signature, the signer and the archive bytes against the body before using anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from computemesh.identity import Identity, sign_document, verify_document
from computemesh.identity.documents import CHECKPOINT_KIND
from computemesh.models.errors import IdentityError, VerificationError
from computemesh.models.market import Checkpoint
from computemesh.models.validation import parse_model

MAX_CHECKPOINT_BYTES = 512 * 1024
"""The largest archive accepted; base64 inside a 1 MiB envelope leaves room for the rest."""


@dataclass(frozen=True)
class CheckedCheckpoint:
    """A checkpoint that verified: its statement, signed document and archive bytes."""

    body: Checkpoint
    document: dict[str, Any]
    archive: bytes


def sign_checkpoint(provider: Identity, checkpoint: Checkpoint) -> dict[str, Any]:
    if checkpoint.provider != provider.did:
        raise ValueError("a checkpoint is signed by the provider it names")
    return sign_document(provider, CHECKPOINT_KIND, checkpoint.model_dump(mode="json"))


def checkpoint_payload(document: dict[str, Any], archive: bytes) -> dict[str, Any]:
    """The wire form of a signed checkpoint with its archive."""
    return {"checkpoint": document, "archive_b64": base64.b64encode(archive).decode("ascii")}


def verify_checkpoint(
    payload: object,
    *,
    signer: str | None = None,
    sha256: str | None = None,
    max_bytes: int = MAX_CHECKPOINT_BYTES,
) -> CheckedCheckpoint:
    """The checkpoint in ``payload`` once its signature and archive check.

    ``signer``, when given, must have signed it; ``sha256``, when given, must be its
    archive's digest. Raises VerificationError (code "invalid_checkpoint") saying which
    check failed: shape, signature, signer, size, or hash.
    """
    if not isinstance(payload, dict):
        raise _invalid("a checkpoint payload must be an object")
    document = payload.get("checkpoint")
    try:
        body = verify_document(document, kind=CHECKPOINT_KIND, signer=signer)
    except IdentityError as exc:
        raise _invalid(f"checkpoint document: {exc.message}") from exc
    assert isinstance(document, dict)
    checkpoint = parse_model(Checkpoint, body, what="checkpoint")
    if checkpoint.provider != document["signer"]:
        raise _invalid("checkpoint names another provider than its signer")
    archive = _archive_bytes(payload.get("archive_b64"), max_bytes)
    if len(archive) != checkpoint.size:
        raise _invalid(f"archive is {len(archive)} bytes, the document says {checkpoint.size}")
    digest = hashlib.sha256(archive).hexdigest()
    if digest != checkpoint.sha256:
        raise _invalid("archive does not hash to the sha256 its document signs")
    if sha256 is not None and digest != sha256:
        raise _invalid(f"checkpoint {digest[:12]} is not the one asked for ({sha256[:12]})")
    return CheckedCheckpoint(body=checkpoint, document=document, archive=archive)


def _archive_bytes(encoded: object, max_bytes: int) -> bytes:
    if not isinstance(encoded, str):
        raise _invalid("archive_b64 must be a string")
    if len(encoded) > (max_bytes + 2) // 3 * 4:
        raise _invalid(f"archive is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid(f"archive_b64 is not base64: {exc}") from exc


def _invalid(message: str) -> VerificationError:
    return VerificationError(message, code="invalid_checkpoint")
