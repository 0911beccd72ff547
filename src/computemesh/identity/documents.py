"""Signed documents: statements that outlive the envelope that carried them.

Contracts and results are stored and checked long after delivery, so they carry their
own signature. A signed document is the JSON object::

    {"kind": KIND, "body": {...}, "signer": "did:key:...", "signature": "<base64url>"}

where ``signature`` is the signer's Ed25519 signature over
``b"computemesh/document/v1\\n" + canonical_json({"kind": KIND, "body": BODY, "signer": DID})``.
The ``kind`` is signed too, so a signature given for one purpose cannot be presented as
another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from computemesh.identity.canonical import b64url_decode, b64url_encode, canonical_json
from computemesh.identity.did import public_key_from_did
from computemesh.identity.keys import SIGNATURE_LENGTH, Identity, verify_signature
from computemesh.models.errors import IdentityError

DOCUMENT_CONTEXT = b"computemesh/document/v1\n"
DOCUMENT_FIELDS = frozenset({"kind", "body", "signer", "signature"})
CHECKPOINT_KIND = "checkpoint"
"""A provider's statement of one snapshot of a job's checkpoint directory (``Checkpoint``)."""


def document_signing_input(kind: str, body: Mapping[str, Any], signer: str) -> bytes:
    """The exact bytes a document signature covers. ValueError if not JSON-encodable."""
    return DOCUMENT_CONTEXT + canonical_json({"kind": kind, "body": body, "signer": signer})


def sign_document(identity: Identity, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` signed by ``identity`` as a document of ``kind``.

    The returned ``body`` is a JSON-normalised copy of ``body`` (tuples become lists), so
    later changes to the caller's objects cannot invalidate the signature. Raises
    ``ValueError`` for an empty or non-string ``kind``, or a ``body`` that is not a mapping
    JSON can encode.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError("a document kind is a non-empty string")
    if not isinstance(body, Mapping):
        raise ValueError("a document body is a mapping")
    body_copy: dict[str, Any] = json.loads(canonical_json(dict(body)))
    signature = identity.sign(document_signing_input(kind, body_copy, identity.did))
    return {
        "kind": kind,
        "body": body_copy,
        "signer": identity.did,
        "signature": b64url_encode(signature),
    }


def verify_document(doc: object, *, kind: str, signer: str | None = None) -> dict[str, Any]:
    """The body of ``doc`` once it is proven to be a ``kind`` document signed by ``signer``.

    ``signer=None`` accepts any signer (read it from ``doc["signer"]``). Raises
    ``IdentityError`` with code ``bad_document`` when ``doc`` is not an object with exactly
    the four document fields of the right types, a valid did:key signer and a 64-byte
    base64url signature; ``wrong_kind`` or ``wrong_signer`` when it is another kind or by
    another signer; ``bad_signature`` when the signature does not verify.
    """
    document = _check_document_shape(doc)
    if document["kind"] != kind:
        raise IdentityError(
            f"expected a {kind!r} document, got {document['kind']!r}", code="wrong_kind"
        )
    if signer is not None and document["signer"] != signer:
        raise IdentityError(
            f"document signed by {document['signer']}, expected {signer}", code="wrong_signer"
        )
    signed = _signing_input_or_none(document)
    signature = b64url_decode(document["signature"])
    if signed is None or not verify_signature(document["signer"], signed, signature):
        raise IdentityError(
            f"the {kind!r} document's signature does not verify", code="bad_signature"
        )
    body: dict[str, Any] = document["body"]
    return body


def document_digest(doc_or_body: Mapping[str, Any]) -> str:
    """Lowercase hex SHA-256 of the canonical JSON of a document or body.

    Raises ``ValueError`` when it is not JSON-encodable.
    """
    return hashlib.sha256(canonical_json(dict(doc_or_body))).hexdigest()


def _check_document_shape(doc: object) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise _bad_document("a signed document must be a JSON object")
    if doc.keys() != DOCUMENT_FIELDS:
        found = ", ".join(sorted(map(str, doc.keys())))
        raise _bad_document(
            f"a signed document has exactly kind, body, signer, signature; found {found}"
        )
    for field, expected, name in (
        ("kind", str, "a string"),
        ("body", dict, "an object"),
        ("signer", str, "a string"),
        ("signature", str, "a string"),
    ):
        if not isinstance(doc[field], expected):
            raise _bad_document(f"document {field} must be {name}")
    try:
        public_key_from_did(doc["signer"])
    except IdentityError as exc:
        raise _bad_document(f"document signer: {exc.message}") from exc
    try:
        signature = b64url_decode(doc["signature"])
    except ValueError as exc:
        raise _bad_document(f"document signature is not base64url: {exc}") from exc
    if len(signature) != SIGNATURE_LENGTH:
        raise _bad_document(f"document signature is {len(signature)} bytes, not 64")
    return doc


def _signing_input_or_none(document: dict[str, Any]) -> bytes | None:
    """The signed bytes, or None for a body that cannot be canonically encoded."""
    try:
        return document_signing_input(document["kind"], document["body"], document["signer"])
    except ValueError:
        return None


def _bad_document(message: str) -> IdentityError:
    return IdentityError(message, code="bad_document")
