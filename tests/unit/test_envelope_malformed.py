"""The verifier's ``malformed`` check: every way wire bytes can fail to be an envelope."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from computemesh.identity import EnvelopeVerifier
from computemesh.identity.canonical import b64url_encode, canonical_json
from computemesh.models.errors import EnvelopeRejected
from tests.unit.test_envelope import (
    ALICE,
    BOB,
    NOW_MS,
    fixed_clock,
    rejection,
    resigned,
    sealed,
    wire_object,
)


def test_malformed_non_json() -> None:
    assert rejection(b"not json at all") == "malformed"


def test_malformed_not_utf8() -> None:
    assert rejection(b'{"v":1,"x":"\xff"}') == "malformed"


@pytest.mark.parametrize("data", [b"[]", b"[1,2]", b'"text"', b"null", b"7"])
def test_malformed_not_an_object(data: bytes) -> None:
    assert rejection(data) == "malformed"


def test_malformed_array_of_a_valid_envelope() -> None:
    assert rejection(b"[" + sealed() + b"]") == "malformed"


def test_malformed_non_canonical_whitespace() -> None:
    spaced = json.dumps(wire_object(sealed()), sort_keys=True).encode()
    with pytest.raises(EnvelopeRejected, match="canonical") as caught:
        fixed_clock().open(spaced, accept_recipients={BOB.did})
    assert caught.value.code == "malformed"


def test_malformed_trailing_newline() -> None:
    assert rejection(sealed() + b"\n") == "malformed"


def test_malformed_unsorted_keys() -> None:
    obj = wire_object(sealed())
    reordered = dict(reversed(list(obj.items())))
    data = json.dumps(reordered, separators=(",", ":"), ensure_ascii=False).encode()
    assert rejection(data) == "malformed"


def test_malformed_escaped_unicode() -> None:
    obj = wire_object(sealed(payload={"name": "é"}))
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert rejection(data) == "malformed"


def test_malformed_duplicate_key() -> None:
    data = sealed()
    duplicated = data.replace(b'{"beh":', b'{"beh":"/x","beh":', 1)
    assert duplicated != data
    assert rejection(duplicated) == "malformed"


def test_malformed_extra_field_even_when_signed() -> None:
    obj = wire_object(sealed())
    obj["extra"] = 1
    with pytest.raises(EnvelopeRejected, match="unknown field") as caught:
        fixed_clock().open(resigned(obj, ALICE), accept_recipients={BOB.did})
    assert caught.value.code == "malformed"


@pytest.mark.parametrize("field", ["v", "from", "to", "beh", "nonce", "iat", "exp", "payload"])
def test_malformed_missing_field(field: str) -> None:
    obj = wire_object(sealed())
    del obj[field]
    with pytest.raises(EnvelopeRejected, match=f"missing field.*{field}") as caught:
        fixed_clock().open(resigned(obj, ALICE), accept_recipients={BOB.did})
    assert caught.value.code == "malformed"


def test_malformed_missing_signature() -> None:
    obj = wire_object(sealed())
    del obj["sig"]
    assert rejection(canonical_json(obj)) == "malformed"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("v", "1"),
        ("v", True),
        ("v", 1.0),
        ("from", 5),
        ("to", None),
        ("beh", ["/mesh"]),
        ("nonce", 12),
        ("iat", "1700000000000"),
        ("iat", 1.7e12),
        ("exp", False),
        ("payload", [1, 2]),
        ("payload", "text"),
        ("payload", None),
        ("sig", 0),
    ],
    ids=lambda value: repr(value)[:20],
)
def test_malformed_wrong_field_type(field: str, value: Any) -> None:
    obj = wire_object(sealed())
    obj[field] = value
    data = resigned(obj, ALICE) if field != "sig" else canonical_json(obj)
    assert rejection(data) == "malformed"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("v", 2),
        ("v", 0),
        ("nonce", "A" * 32),
        ("nonce", "0" * 31),
        ("nonce", "g" * 32),
        ("beh", "mesh/bid"),
        ("beh", "/MESH"),
        ("to", "topic:BAD NAME"),
        ("to", "did:key:z6Mk"),
        ("iat", -1),
    ],
)
def test_malformed_bad_field_format(field: str, value: Any) -> None:
    obj = wire_object(sealed())
    obj[field] = value
    assert rejection(resigned(obj, ALICE)) == "malformed"


@pytest.mark.parametrize(
    "sig",
    ["", "AAAA", b64url_encode(bytes(63)), b64url_encode(bytes(65)), "*" * 86, "A" * 85 + "="],
    ids=["empty", "short", "63-bytes", "65-bytes", "bad-chars", "padding"],
)
def test_malformed_signature_encoding(sig: str) -> None:
    obj = wire_object(sealed())
    obj["sig"] = sig
    assert rejection(canonical_json(obj)) == "malformed"


def test_malformed_nan_constant() -> None:
    obj = wire_object(sealed())
    data = canonical_json(obj).replace(b'"price":3', b'"price":NaN')
    assert rejection(data) == "malformed"


def test_malformed_deeply_nested_payload() -> None:
    data = sealed().replace(b'"price":3', b'"price":' + b"[" * 100_000 + b"]" * 100_000)
    verifier = EnvelopeVerifier(max_bytes=10**7, clock=lambda: NOW_MS / 1000)
    assert rejection(data, verifier) == "malformed"


def test_deep_nesting_is_refused_even_with_a_raised_recursion_limit() -> None:
    data = sealed().replace(b'"price":3', b'"price":' + b"[" * 200_000 + b"]" * 200_000)
    verifier = EnvelopeVerifier(max_bytes=10**7, clock=lambda: NOW_MS / 1000)
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000_000)
    try:
        assert rejection(data, verifier) == "malformed"
    finally:
        sys.setrecursionlimit(previous)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    obj = wire_object(sealed())
    obj["payload"] = {"text": "[{" * 500 + '\\"' + "}]" * 500}
    data = canonical_json(obj)
    with pytest.raises(EnvelopeRejected) as caught:
        EnvelopeVerifier(clock=lambda: NOW_MS / 1000).open(data, accept_recipients=set())
    assert caught.value.code == "bad_signature"  # parsed fine; only the signature is off
