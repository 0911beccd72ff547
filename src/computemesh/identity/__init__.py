"""Who is speaking, and proof of it: did:key identities, signed envelopes and documents.

Every participant is an Ed25519 key named by its did:key (``did``), kept in a home
directory (``keystore``). Every wire message is a signed, expiring, replay-protected
envelope (``envelope``, format in ``wire``); statements that must outlive a message are
signed documents (``documents``). All signatures cover canonical JSON (``canonical``).
"""

from computemesh.identity.canonical import canonical_json
from computemesh.identity.did import did_from_public_key, public_key_from_did
from computemesh.identity.documents import document_digest, sign_document, verify_document
from computemesh.identity.envelope import Envelope, EnvelopeVerifier, ReplayCache, seal
from computemesh.identity.keys import Identity, verify_signature
from computemesh.identity.keystore import (
    export_identity,
    identity_from_document,
    identity_to_document,
    load_identity,
    load_or_create_identity,
    resolve_home,
    save_identity,
)

__all__ = [
    "Envelope",
    "EnvelopeVerifier",
    "Identity",
    "ReplayCache",
    "canonical_json",
    "did_from_public_key",
    "document_digest",
    "export_identity",
    "identity_from_document",
    "identity_to_document",
    "load_identity",
    "load_or_create_identity",
    "public_key_from_did",
    "resolve_home",
    "save_identity",
    "seal",
    "sign_document",
    "verify_document",
    "verify_signature",
]
