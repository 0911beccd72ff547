"""Signed documents: signing, verification, tampering and digests."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from computemesh.identity import Identity, document_digest, sign_document, verify_document
from computemesh.identity.canonical import b64url_decode, b64url_encode, canonical_json
from computemesh.models.errors import IdentityError

ALICE = Identity.from_seed(bytes([11]) * 32)
BOB = Identity.from_seed(bytes([12]) * 32)
BODY: dict[str, Any] = {"job": "j-1", "price": {"amount": 5, "unit": "credit"}, "tags": ["a"]}


def signed(body: dict[str, Any] | None = None, kind: str = "contract") -> dict[str, Any]:
    return sign_document(ALICE, kind, BODY if body is None else body)


def failure_code(doc: object, *, kind: str = "contract", signer: str | None = None) -> str:
    with pytest.raises(IdentityError) as caught:
        verify_document(doc, kind=kind, signer=signer)
    assert caught.value.message
    return caught.value.code


def test_sign_document_shape() -> None:
    doc = signed()
    assert set(doc) == {"kind", "body", "signer", "signature"}
    assert doc["kind"] == "contract"
    assert doc["body"] == BODY
    assert doc["signer"] == ALICE.did
    assert len(b64url_decode(doc["signature"])) == 64


def test_signature_covers_context_kind_body_and_signer() -> None:
    doc = signed()
    expected = ALICE.sign(
        b"computemesh/document/v1\n"
        + canonical_json({"kind": "contract", "body": BODY, "signer": ALICE.did})
    )
    assert b64url_decode(doc["signature"]) == expected


def test_verify_returns_the_body() -> None:
    doc = signed()
    assert verify_document(doc, kind="contract", signer=ALICE.did) == BODY
    assert verify_document(doc, kind="contract") == BODY


def test_signed_body_is_independent_of_the_callers_objects() -> None:
    body = copy.deepcopy(BODY)
    doc = sign_document(ALICE, "contract", body)
    body["price"]["amount"] = 999
    assert verify_document(doc, kind="contract")["price"]["amount"] == 5


def test_tuples_in_the_body_are_signed_as_lists() -> None:
    doc = sign_document(ALICE, "result", {"shape": (2, 3)})
    assert verify_document(doc, kind="result") == {"shape": [2, 3]}


def test_wrong_kind() -> None:
    assert failure_code(signed(kind="result"), kind="contract") == "wrong_kind"


def test_wrong_signer() -> None:
    with pytest.raises(IdentityError, match=BOB.did) as caught:
        verify_document(signed(), kind="contract", signer=BOB.did)
    assert caught.value.code == "wrong_signer"


def test_tampered_body_fails_the_signature() -> None:
    doc = signed()
    doc["body"]["price"]["amount"] = 1
    assert failure_code(doc) == "bad_signature"


def test_relabelled_kind_fails_the_signature() -> None:
    doc = signed(kind="contract")
    doc["kind"] = "result"
    assert failure_code(doc, kind="result") == "bad_signature"


def test_claiming_another_signer_fails_the_signature() -> None:
    doc = signed()
    doc["signer"] = BOB.did
    assert failure_code(doc, signer=BOB.did) == "bad_signature"


def test_flipped_signature_byte_fails_the_signature() -> None:
    doc = signed()
    signature = bytearray(b64url_decode(doc["signature"]))
    signature[-1] ^= 0x80
    doc["signature"] = b64url_encode(bytes(signature))
    assert failure_code(doc) == "bad_signature"


def test_a_body_that_cannot_be_encoded_fails_the_signature() -> None:
    doc = signed()
    doc["body"] = {"x": float("nan")}
    assert failure_code(doc) == "bad_signature"


@pytest.mark.parametrize(
    "change",
    [
        {"extra": 1},
        {"body": [1]},
        {"body": "text"},
        {"kind": 3},
        {"signer": None},
        {"signer": "did:key:zinvalid"},
        {"signature": 7},
        {"signature": "not base64!"},
        {"signature": b64url_encode(bytes(63))},
    ],
    ids=lambda value: repr(value)[:30],
)
def test_bad_document_shape(change: dict[str, Any]) -> None:
    assert failure_code({**signed(), **change}) == "bad_document"


@pytest.mark.parametrize("field", ["kind", "body", "signer", "signature"])
def test_bad_document_missing_field(field: str) -> None:
    doc = signed()
    del doc[field]
    assert failure_code(doc) == "bad_document"


@pytest.mark.parametrize("doc", [None, [], "doc", 1])
def test_bad_document_not_an_object(doc: object) -> None:
    assert failure_code(doc) == "bad_document"


@pytest.mark.parametrize("kind", ["", None])
def test_sign_document_requires_a_kind(kind: Any) -> None:
    with pytest.raises(ValueError):
        sign_document(ALICE, kind, BODY)


@pytest.mark.parametrize("body", [{"x": object()}, {"x": float("inf")}, {1: "x"}, [1]])
def test_sign_document_requires_a_json_body(body: Any) -> None:
    with pytest.raises(ValueError):
        sign_document(ALICE, "contract", body)


def test_document_digest_is_sha256_of_canonical_json() -> None:
    digest = document_digest({"b": 1, "a": [True, None]})
    assert digest == document_digest({"a": [True, None], "b": 1})
    assert digest == hashlib.sha256(b'{"a":[true,null],"b":1}').hexdigest()
    assert document_digest({"b": 2, "a": [True, None]}) != digest


def test_document_digest_of_a_document_changes_with_its_signature() -> None:
    first, second = signed(), sign_document(BOB, "contract", BODY)
    assert document_digest(first["body"]) == document_digest(second["body"])
    assert document_digest(first) != document_digest(second)
