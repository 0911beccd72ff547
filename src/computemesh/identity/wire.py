"""The envelope wire format: its fields, their formats, and strict parsing.

The wire bytes are exactly the canonical JSON (``canonical.canonical_json``) of::

    {
      "v": 1,                        envelope version
      "from": "did:key:z6Mk...",     sender DID: the signer
      "to": "did:key:..." | "topic:NAME",
      "beh": "/mesh/deployment/bid", behaviour path
      "nonce": "<32 lowercase hex>", 16 random bytes
      "iat": 1700000000000,          issued at, ms since the Unix epoch
      "exp": 1700000030000,          expires at, ms since the Unix epoch
      "payload": {...},              any JSON object
      "sig": "<base64url>"           Ed25519 signature, unpadded base64url
    }

``sig`` signs ``b"computemesh/envelope/v1\\n" + canonical_json(<the object without "sig">)``.
Any other byte spelling of the same object (whitespace, key order, escapes, duplicate keys)
is refused, so the bytes that were signed are the bytes on the wire.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from computemesh.identity.canonical import b64url_decode, b64url_encode, canonical_json
from computemesh.identity.did import public_key_from_did
from computemesh.identity.keys import SIGNATURE_LENGTH
from computemesh.models.errors import EnvelopeRejected, IdentityError

ENVELOPE_VERSION = 1
TOPIC_PREFIX = "topic:"
SIGNATURE_CONTEXT = b"computemesh/envelope/v1\n"
MAX_BEHAVIOR_LENGTH = 128
MAX_TOPIC_NAME_LENGTH = 128

_BEHAVIOR = re.compile(r"(?:/[a-z0-9_-]+)+")
_TOPIC_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_NONCE = re.compile(r"[0-9a-f]{32}")
_FIELD_TYPES: dict[str, type] = {
    "v": int,
    "from": str,
    "to": str,
    "beh": str,
    "nonce": str,
    "iat": int,
    "exp": int,
    "payload": dict,
    "sig": str,
}

MAX_NESTING_DEPTH = 64
_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


@dataclass(frozen=True)
class Envelope:
    """A verified envelope as its recipient sees it; ``sender`` is the proven signer."""

    version: int
    sender: str
    recipient: str
    behavior: str
    nonce: str
    issued_at_ms: int
    expires_at_ms: int
    payload: dict[str, Any]
    signature: bytes

    def unsigned_object(self) -> dict[str, Any]:
        """The wire object without ``sig``: what the signature covers."""
        return {
            "v": self.version,
            "from": self.sender,
            "to": self.recipient,
            "beh": self.behavior,
            "nonce": self.nonce,
            "iat": self.issued_at_ms,
            "exp": self.expires_at_ms,
            "payload": self.payload,
        }

    def to_bytes(self) -> bytes:
        """The canonical wire bytes of this envelope."""
        return canonical_json({**self.unsigned_object(), "sig": b64url_encode(self.signature)})


def signing_input(unsigned: Mapping[str, Any]) -> bytes:
    """The exact bytes an envelope signature covers. ValueError if not JSON-encodable."""
    return SIGNATURE_CONTEXT + canonical_json(dict(unsigned))


def validate_behavior(behavior: object) -> None:
    """Raise ``ValueError`` unless ``behavior`` is a path like ``/mesh/deployment/bid``.

    A behaviour is at most 128 characters of ``/``-led segments of ``[a-z0-9_-]+``.
    """
    if not isinstance(behavior, str) or len(behavior) > MAX_BEHAVIOR_LENGTH:
        raise ValueError(f"behaviour must be a string of at most {MAX_BEHAVIOR_LENGTH} chars")
    if _BEHAVIOR.fullmatch(behavior) is None:
        raise ValueError(f"behaviour {behavior!r} is not a path of /[a-z0-9_-]+ segments")


def validate_recipient(recipient: object) -> None:
    """Raise ``ValueError`` unless ``recipient`` is a did:key or ``topic:NAME``.

    NAME is at most 128 characters: dot-separated, non-empty runs of ``[a-z0-9_-]``.
    """
    if not isinstance(recipient, str):
        raise ValueError("recipient must be a string")
    if recipient.startswith(TOPIC_PREFIX):
        name = recipient.removeprefix(TOPIC_PREFIX)
        if len(name) > MAX_TOPIC_NAME_LENGTH or _TOPIC_NAME.fullmatch(name) is None:
            raise ValueError(f"recipient {recipient!r} is not a valid topic:NAME")
        return
    try:
        public_key_from_did(recipient)
    except IdentityError as exc:
        raise ValueError(f"recipient is neither a did:key nor a topic: {exc.message}") from exc


def parse_envelope(data: bytes) -> Envelope:
    """Parse wire bytes into an ``Envelope`` checking shape only, not signature or time.

    Raises ``EnvelopeRejected`` (code ``malformed``) for bytes that are not UTF-8 JSON of an
    object with exactly the envelope fields of the right types, a version other than 1, a
    bad nonce, behaviour or recipient, a signature that is not 64 bytes of base64url, or
    bytes that differ from the object's canonical encoding. The sender is only checked to
    be a string here.
    """
    obj = _decode_json_object(data)
    _check_field_set(obj)
    _check_field_types(obj)
    _check_field_formats(obj)
    signature = _decode_signature(obj["sig"])
    if _canonical_or_none(obj) != data:
        _malformed("bytes are not the canonical JSON encoding of the envelope")
    return Envelope(
        version=obj["v"],
        sender=obj["from"],
        recipient=obj["to"],
        behavior=obj["beh"],
        nonce=obj["nonce"],
        issued_at_ms=obj["iat"],
        expires_at_ms=obj["exp"],
        payload=obj["payload"],
        signature=signature,
    )


def _decode_json_object(data: bytes) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        _malformed(f"expected bytes, got {type(data).__name__}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        _malformed(f"not UTF-8: {exc.reason} at byte {exc.start}")
    depth = _nesting_depth(text)
    if depth > MAX_NESTING_DEPTH:
        _malformed(f"nested {depth} deep; the limit is {MAX_NESTING_DEPTH}")
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        _malformed(f"not JSON: {exc}")
    if not isinstance(obj, dict):
        _malformed(f"not a JSON object but a JSON {_json_kind(obj)}")
    return obj


def _nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest, counted outside string literals.

    Checked before parsing: the C JSON decoder recurses once per level, and a process whose
    recursion limit was raised by some library can overflow its stack on a deep document.
    """
    brackets = _BRACKETS.findall(_STRING_LITERAL.sub("", text))
    depth = deepest = 0
    for bracket in brackets:
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _canonical_or_none(obj: dict[str, Any]) -> bytes | None:
    try:
        return canonical_json(obj)
    except ValueError:
        return None


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _json_kind(value: object) -> str:
    kinds = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
    }
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _check_field_set(obj: dict[str, Any]) -> None:
    missing = sorted(_FIELD_TYPES.keys() - obj.keys())
    if missing:
        _malformed(f"missing field(s): {', '.join(missing)}")
    extra = sorted(obj.keys() - _FIELD_TYPES.keys())
    if extra:
        _malformed(f"unknown field(s): {', '.join(extra)}")


def _check_field_types(obj: dict[str, Any]) -> None:
    for field, expected in _FIELD_TYPES.items():
        value = obj[field]
        if isinstance(value, bool) or not isinstance(value, expected):
            _malformed(
                f"field {field!r} must be a JSON {_json_kind(expected())}, "
                f"not a JSON {_json_kind(value)}"
            )


def _check_field_formats(obj: dict[str, Any]) -> None:
    if obj["v"] != ENVELOPE_VERSION:
        _malformed(f"unsupported envelope version {obj['v']} (expected {ENVELOPE_VERSION})")
    if _NONCE.fullmatch(obj["nonce"]) is None:
        _malformed("nonce must be 32 lowercase hex digits")
    if obj["iat"] < 0 or obj["exp"] < 0:
        _malformed("iat and exp must be non-negative ms since the epoch")
    for field, validate in (("beh", validate_behavior), ("to", validate_recipient)):
        try:
            validate(obj[field])
        except ValueError as exc:
            _malformed(f"field {field!r}: {exc}")


def _decode_signature(text: str) -> bytes:
    try:
        signature = b64url_decode(text)
    except ValueError as exc:
        _malformed(f"sig is not base64url: {exc}")
    if len(signature) != SIGNATURE_LENGTH:
        _malformed(f"sig is {len(signature)} bytes, not {SIGNATURE_LENGTH}")
    return signature


def _malformed(message: str) -> NoReturn:
    raise EnvelopeRejected(message, code="malformed")
