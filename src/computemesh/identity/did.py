"""did:key identifiers for Ed25519 public keys.

A DID here is always the bare ``did:key`` of an Ed25519 key::

    did:key:z<base58btc(0xed 0x01 || 32-byte public key)>

``z`` is the multibase prefix of base58btc (bitcoin alphabet) and ``0xed 0x01`` is the
unsigned-varint multicodec of ``ed25519-pub``. DID URLs (``#fragment``, ``?query``, paths)
and other key types are not DIDs of a participant and are rejected.
"""

from __future__ import annotations

import base58

from computemesh.models.errors import IdentityError

ED25519_MULTICODEC = b"\xed\x01"
ED25519_PUBLIC_KEY_LENGTH = 32
DID_KEY_PREFIX = "did:key:"
BASE58BTC_MULTIBASE_PREFIX = "z"

_BAD_DID = "bad_did"


def did_from_public_key(public_key: bytes) -> str:
    """The did:key of a 32-byte Ed25519 public key.

    Raises ``ValueError`` when ``public_key`` is not 32 bytes.
    """
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_PUBLIC_KEY_LENGTH:
        raise ValueError(f"an Ed25519 public key is {ED25519_PUBLIC_KEY_LENGTH} bytes")
    encoded: bytes = base58.b58encode(ED25519_MULTICODEC + public_key)
    return DID_KEY_PREFIX + BASE58BTC_MULTIBASE_PREFIX + encoded.decode("ascii")


def public_key_from_did(did: str) -> bytes:
    """The 32-byte Ed25519 public key a did:key names.

    Raises ``IdentityError`` (code ``bad_did``) when ``did`` is not a string of the form
    ``did:key:z...``, carries a fragment, query or path, is not valid base58btc, names
    another multicodec than ed25519-pub, holds a key of the wrong length, or is not the one
    canonical spelling of its key.
    """
    multibase = _multibase_part(did)
    decoded = _decode_base58btc(did, multibase)
    if not decoded.startswith(ED25519_MULTICODEC):
        raise IdentityError(f"{did!r} is not an Ed25519 did:key", code=_BAD_DID)
    public_key = decoded[len(ED25519_MULTICODEC) :]
    if len(public_key) != ED25519_PUBLIC_KEY_LENGTH:
        raise IdentityError(
            f"{did!r} holds a {len(public_key)}-byte key, not {ED25519_PUBLIC_KEY_LENGTH}",
            code=_BAD_DID,
        )
    if did_from_public_key(public_key) != did:
        raise IdentityError(f"{did!r} is not in canonical form", code=_BAD_DID)
    return public_key


def _multibase_part(did: object) -> str:
    """The base58btc text after ``did:key:z``; IdentityError if the shape is wrong."""
    if not isinstance(did, str) or not did.startswith(DID_KEY_PREFIX):
        raise IdentityError(f"{did!r} is not a did:key", code=_BAD_DID)
    method_specific = did[len(DID_KEY_PREFIX) :]
    if any(mark in method_specific for mark in "#?/;"):
        raise IdentityError(
            f"{did!r} is a DID URL; a bare DID has no fragment, query or path", code=_BAD_DID
        )
    if not method_specific.startswith(BASE58BTC_MULTIBASE_PREFIX):
        raise IdentityError(f"{did!r} is not base58btc multibase (z...)", code=_BAD_DID)
    return method_specific[len(BASE58BTC_MULTIBASE_PREFIX) :]


def _decode_base58btc(did: str, text: str) -> bytes:
    if not text or not text.isascii():
        raise IdentityError(f"{did!r} has no valid base58btc key", code=_BAD_DID)
    try:
        decoded: bytes = base58.b58decode(text)
    except ValueError as exc:
        raise IdentityError(f"{did!r} is not valid base58btc: {exc}", code=_BAD_DID) from exc
    return decoded


def abbreviate_did(did: str) -> str:
    """A DID cut for logs, reasons and tables: ``…`` and its last 10 characters."""
    return did if len(did) <= 16 else f"…{did[-10:]}"
