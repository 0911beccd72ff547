"""Identities: canonical JSON, did:key (W3C vectors) and Ed25519 keys."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import base58
import pytest

from computemesh.identity import (
    Identity,
    did_from_public_key,
    public_key_from_did,
    verify_signature,
)
from computemesh.identity.canonical import b64url_decode, b64url_encode, canonical_json
from computemesh.identity.did import ED25519_MULTICODEC
from computemesh.models.errors import IdentityError

VECTORS_FILE = Path(__file__).resolve().parents[1] / "data" / "did_key_ed25519_vectors.json"
# The X25519 key-agreement DID listed beside the first Ed25519 vector in the same W3C file.
W3C_X25519_DID = "did:key:z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW"


def load_vectors() -> list[tuple[str, dict[str, Any]]]:
    data = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
    return sorted(data["vectors"].items())


W3C_VECTORS = load_vectors()


# canonical JSON and base64url --------------------------------------------------------------


def test_canonical_json_sorts_keys_without_whitespace_and_keeps_unicode() -> None:
    encoded = canonical_json({"b": [1, 2.5, None, True], "a": {"z": "é", "y": "\n"}})
    assert encoded == '{"a":{"y":"\\n","z":"é"},"b":[1,2.5,null,true]}'.encode()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_canonical_json_rejects_non_finite_floats(value: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": value})


@pytest.mark.parametrize("obj", [{1: "a"}, {"a": {None: 1}}, [{"ok": 1}, {True: 2}]])
def test_canonical_json_rejects_non_string_keys(obj: object) -> None:
    with pytest.raises(ValueError, match="keys must be strings"):
        canonical_json(obj)


@pytest.mark.parametrize("obj", [{"s": {1, 2}}, {"b": b"bytes"}, object()])
def test_canonical_json_rejects_non_json_types(obj: object) -> None:
    with pytest.raises(ValueError):
        canonical_json(obj)


def test_canonical_json_allows_shared_but_rejects_circular_references() -> None:
    shared = [1]
    assert canonical_json({"a": shared, "b": shared}) == b'{"a":[1],"b":[1]}'
    circular: dict[str, object] = {}
    circular["self"] = circular
    with pytest.raises(ValueError):
        canonical_json(circular)


@pytest.mark.parametrize("length", range(8))
def test_b64url_round_trips_without_padding(length: int) -> None:
    data = bytes(range(250, 250 - length, -1))
    text = b64url_encode(data)
    assert "=" not in text
    assert b64url_decode(text) == data


def test_b64url_uses_the_url_safe_alphabet() -> None:
    assert b64url_encode(b"\xfb\xff") == "-_8"


@pytest.mark.parametrize(
    "text",
    ["AA==", "+/8", "a b", "A", "AAAAA", "AB", "ÀÀ", "AA\n"],
    ids=["padding", "std-alphabet", "space", "len1", "len5", "unused-bits", "non-ascii", "nl"],
)
def test_b64url_decode_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(text)


# did:key ------------------------------------------------------------------------------------


def test_w3c_vector_file_holds_the_ed25519_vectors() -> None:
    assert len(W3C_VECTORS) == 5
    assert all(did.startswith("did:key:z6Mk") for did, _ in W3C_VECTORS)


@pytest.mark.parametrize(("did", "vector"), W3C_VECTORS, ids=[d for d, _ in W3C_VECTORS])
def test_w3c_vector_did_from_public_key(did: str, vector: dict[str, Any]) -> None:
    public_key = base58.b58decode(vector["verificationKeyPair"]["publicKeyBase58"])
    assert did_from_public_key(public_key) == did
    assert public_key_from_did(did) == public_key


@pytest.mark.parametrize(("did", "vector"), W3C_VECTORS, ids=[d for d, _ in W3C_VECTORS])
def test_w3c_vector_identity_from_seed(did: str, vector: dict[str, Any]) -> None:
    identity = Identity.from_seed(bytes.fromhex(vector["seed"]))
    assert identity.did == did
    expected_key = base58.b58decode(vector["verificationKeyPair"]["publicKeyBase58"])
    assert identity.public_key == expected_key


def encoded_did(raw: bytes) -> str:
    return "did:key:z" + base58.b58encode(raw).decode()


@pytest.mark.parametrize(
    "did",
    [
        "did:web:example.com",
        "did:key:",
        "did:key:z",
        "did:key:6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooW0",
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp#z6MkiTBz1ymuepAQ4HEHYSF1H8",
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp?service=x",
        "DID:KEY:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
        W3C_X25519_DID,
        encoded_did(ED25519_MULTICODEC + bytes(31)),
        encoded_did(ED25519_MULTICODEC + bytes(33)),
        encoded_did(b"\x00" + ED25519_MULTICODEC + bytes(32)),
    ],
    ids=[
        "other-method",
        "empty",
        "only-multibase-prefix",
        "no-multibase-prefix",
        "bad-base58-char",
        "fragment",
        "query",
        "upper-case-scheme",
        "x25519-multicodec",
        "short-key",
        "long-key",
        "leading-zero-byte",
    ],
)
def test_public_key_from_did_rejects_bad_dids(did: str) -> None:
    with pytest.raises(IdentityError) as caught:
        public_key_from_did(did)
    assert caught.value.code == "bad_did"


def test_public_key_from_did_rejects_non_strings() -> None:
    with pytest.raises(IdentityError) as caught:
        public_key_from_did(None)  # type: ignore[arg-type]
    assert caught.value.code == "bad_did"


@pytest.mark.parametrize("length", [0, 31, 33])
def test_did_from_public_key_requires_32_bytes(length: int) -> None:
    with pytest.raises(ValueError):
        did_from_public_key(bytes(length))


# Identity and signatures -----------------------------------------------------------------


def test_seed_round_trip_gives_the_same_identity() -> None:
    original = Identity.generate()
    restored = Identity.from_seed(original.seed)
    assert len(original.seed) == 32
    assert restored.did == original.did
    assert restored.public_key == original.public_key
    assert public_key_from_did(original.did) == original.public_key


def test_generated_identities_differ() -> None:
    assert Identity.generate().did != Identity.generate().did


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33), "00" * 32, bytearray(32)])
def test_from_seed_requires_32_bytes(seed: Any) -> None:
    with pytest.raises(IdentityError) as caught:
        Identity.from_seed(seed)
    assert caught.value.code == "bad_seed"


def test_repr_shows_the_did_but_not_the_seed() -> None:
    identity = Identity.from_seed(bytes(range(32)))
    text = repr(identity) + str(identity)
    assert identity.did in text
    assert identity.seed.hex() not in text
    assert repr(identity.seed) not in text


def test_signature_verifies_only_for_its_data_and_signer() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    signature = alice.sign(b"hello")
    assert len(signature) == 64
    assert verify_signature(alice.did, b"hello", signature)
    assert not verify_signature(alice.did, b"hellO", signature)
    assert not verify_signature(bob.did, b"hello", signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify_signature(alice.did, b"hello", flipped)


@pytest.mark.parametrize(
    ("did", "signature"),
    [("did:key:nonsense", bytes(64)), (None, bytes(64)), ("", b"")],
)
def test_verify_signature_returns_false_for_bad_input(did: Any, signature: bytes) -> None:
    assert verify_signature(did, b"data", signature) is False


def test_verify_signature_returns_false_for_wrong_signature_length() -> None:
    alice = Identity.generate()
    assert verify_signature(alice.did, b"data", alice.sign(b"data")[:63]) is False
    assert verify_signature(alice.did, b"data", alice.sign(b"data") + b"\x00") is False
