"""Signed envelopes: sealing, every rejection code of the verifier, and the replay cache."""

from __future__ import annotations

import json
from typing import Any

import pytest

from computemesh.identity import Envelope, EnvelopeVerifier, Identity, ReplayCache, seal
from computemesh.identity.canonical import b64url_decode, b64url_encode, canonical_json
from computemesh.identity.envelope import (
    DEFAULT_MAX_ENVELOPE_BYTES,
    DEFAULT_TTL_S,
    ENVELOPE_VERSION,
    TOPIC_PREFIX,
)
from computemesh.identity.wire import SIGNATURE_CONTEXT, parse_envelope, signing_input
from computemesh.models.errors import EnvelopeRejected

NOW_MS = 1_700_000_000_000
BEHAVIOR = "/mesh/deployment/bid"
TOPIC = TOPIC_PREFIX + "bid-requests"

ALICE = Identity.from_seed(bytes([1]) * 32)
BOB = Identity.from_seed(bytes([2]) * 32)
MALLORY = Identity.from_seed(bytes([3]) * 32)


def fixed_clock(ms: float = NOW_MS) -> EnvelopeVerifier:
    return EnvelopeVerifier(replay_cache=ReplayCache(), clock=lambda: ms / 1000)


def sealed(
    sender: Identity = ALICE,
    *,
    recipient: str | None = None,
    payload: dict[str, Any] | None = None,
    ttl_s: float = DEFAULT_TTL_S,
    now_ms: int = NOW_MS,
) -> bytes:
    return seal(
        sender,
        recipient=BOB.did if recipient is None else recipient,
        behavior=BEHAVIOR,
        payload={"price": 3, "gpu": "h100"} if payload is None else payload,
        ttl_s=ttl_s,
        now_ms=now_ms,
    )


def wire_object(data: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(data)
    return obj


def resigned(obj: dict[str, Any], signer: Identity) -> bytes:
    """Canonical bytes of ``obj`` with a fresh, valid signature by ``signer``."""
    unsigned = {key: value for key, value in obj.items() if key != "sig"}
    signature = signer.sign(signing_input(unsigned))
    return canonical_json({**unsigned, "sig": b64url_encode(signature)})


def rejection(data: bytes, verifier: EnvelopeVerifier | None = None, **kwargs: Any) -> str:
    """The code the verifier refuses ``data`` with; fails the test if it is accepted."""
    kwargs.setdefault("accept_recipients", {BOB.did})
    with pytest.raises(EnvelopeRejected) as caught:
        (verifier or fixed_clock()).open(data, **kwargs)
    assert caught.value.message
    return caught.value.code


# Sealing and opening ------------------------------------------------------------------------


def test_round_trip_returns_the_verified_envelope() -> None:
    data = sealed(payload={"job": {"cpu": 2}, "tags": ["a", "é"]})
    envelope = fixed_clock().open(data, accept_recipients={BOB.did}, expected_sender=ALICE.did)
    assert isinstance(envelope, Envelope)
    assert envelope.version == ENVELOPE_VERSION
    assert envelope.sender == ALICE.did
    assert envelope.recipient == BOB.did
    assert envelope.behavior == BEHAVIOR
    assert envelope.payload == {"job": {"cpu": 2}, "tags": ["a", "é"]}
    assert envelope.issued_at_ms == NOW_MS
    assert envelope.expires_at_ms == NOW_MS + 30_000
    assert len(envelope.signature) == 64
    assert envelope.to_bytes() == data


def test_wire_bytes_are_the_canonical_json_of_the_documented_fields() -> None:
    data = sealed()
    obj = wire_object(data)
    assert set(obj) == {"v", "from", "to", "beh", "nonce", "iat", "exp", "payload", "sig"}
    assert canonical_json(obj) == data
    assert obj["v"] == 1
    assert obj["from"] == ALICE.did
    assert len(obj["nonce"]) == 32
    assert obj["nonce"] == obj["nonce"].lower()
    bytes.fromhex(obj["nonce"])


def test_signature_covers_the_context_and_the_unsigned_object() -> None:
    obj = wire_object(sealed())
    unsigned = {key: value for key, value in obj.items() if key != "sig"}
    expected = ALICE.sign(b"computemesh/envelope/v1\n" + canonical_json(unsigned))
    assert SIGNATURE_CONTEXT == b"computemesh/envelope/v1\n"
    assert b64url_decode(obj["sig"]) == expected


def test_each_seal_uses_a_fresh_nonce() -> None:
    nonces = {wire_object(sealed())["nonce"] for _ in range(50)}
    assert len(nonces) == 50


def test_seal_to_a_topic_is_accepted_by_topic_listeners() -> None:
    envelope = fixed_clock().open(sealed(recipient=TOPIC), accept_recipients={BOB.did, TOPIC})
    assert envelope.recipient == TOPIC


def test_seal_uses_the_current_time_by_default() -> None:
    data = seal(ALICE, recipient=BOB.did, behavior=BEHAVIOR, payload={})
    envelope = EnvelopeVerifier().open(data, accept_recipients={BOB.did})
    assert envelope.expires_at_ms - envelope.issued_at_ms == 30_000


@pytest.mark.parametrize(
    "behavior",
    ["", "mesh/bid", "/", "/mesh//bid", "/Mesh/bid", "/mesh/bid/", "/mesh bid", "/" + "a" * 128],
)
def test_seal_rejects_bad_behaviours(behavior: str) -> None:
    with pytest.raises(ValueError):
        seal(ALICE, recipient=BOB.did, behavior=behavior, payload={}, now_ms=NOW_MS)


@pytest.mark.parametrize(
    "recipient",
    ["", "topic:", "topic:Upper", "topic:a b", "topic:.a", "topic:a..b", "did:key:zzz", "bob"],
)
def test_seal_rejects_bad_recipients(recipient: str) -> None:
    with pytest.raises(ValueError):
        seal(ALICE, recipient=recipient, behavior=BEHAVIOR, payload={}, now_ms=NOW_MS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payload": ["not", "a", "mapping"]},
        {"payload": {"x": float("nan")}},
        {"payload": {1: "int key"}},
        {"payload": {"x": object()}},
        {"ttl_s": 0},
        {"ttl_s": -1.0},
        {"ttl_s": float("inf")},
        {"now_ms": -5},
        {"now_ms": 1.5},
    ],
    ids=lambda value: str(value)[:40],
)
def test_seal_rejects_programmer_errors(kwargs: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"recipient": BOB.did, "behavior": BEHAVIOR, "payload": {}}
    arguments["now_ms"] = NOW_MS
    arguments.update(kwargs)
    with pytest.raises(ValueError):
        seal(ALICE, **arguments)


def test_the_longest_allowed_behaviour_is_accepted() -> None:
    behavior = "/" + "a" * 127
    data = seal(ALICE, recipient=BOB.did, behavior=behavior, payload={}, now_ms=NOW_MS)
    assert parse_envelope(data).behavior == behavior


# Rejections, in the verifier's order --------------------------------------------------------


def test_oversized_is_checked_before_parsing() -> None:
    verifier = EnvelopeVerifier(max_bytes=64, clock=lambda: NOW_MS / 1000)
    assert rejection(b"x" * 65, verifier) == "oversized"
    assert rejection(sealed(), verifier) == "oversized"
    assert DEFAULT_MAX_ENVELOPE_BYTES == 1024 * 1024


def test_an_envelope_at_the_size_limit_is_accepted() -> None:
    data = sealed()
    verifier = EnvelopeVerifier(max_bytes=len(data), clock=lambda: NOW_MS / 1000)
    assert verifier.open(data, accept_recipients={BOB.did}).sender == ALICE.did


def test_oversized_message_states_the_size() -> None:
    verifier = EnvelopeVerifier(max_bytes=10, clock=lambda: NOW_MS / 1000)
    with pytest.raises(EnvelopeRejected, match="11 bytes, over the 10-byte limit"):
        verifier.open(b"x" * 11, accept_recipients={BOB.did})


@pytest.mark.parametrize(
    "sender",
    ["did:key:z6MkNOTBASE58000", "did:web:example.com", "", "did:key:" + "z" * 10],
)
def test_bad_sender(sender: str) -> None:
    obj = wire_object(sealed())
    obj["from"] = sender
    assert rejection(canonical_json(obj)) == "bad_sender"


def test_bad_signature_when_the_payload_is_forged() -> None:
    obj = wire_object(sealed())
    obj["payload"]["price"] = 4
    with pytest.raises(EnvelopeRejected, match="does not verify") as caught:
        fixed_clock().open(canonical_json(obj), accept_recipients={BOB.did})
    assert caught.value.code == "bad_signature"


def test_bad_signature_when_a_signature_byte_is_flipped() -> None:
    obj = wire_object(sealed())
    signature = bytearray(b64url_decode(obj["sig"]))
    signature[10] ^= 0x01
    obj["sig"] = b64url_encode(bytes(signature))
    assert rejection(canonical_json(obj)) == "bad_signature"


@pytest.mark.parametrize("field", ["from", "to", "beh", "nonce", "iat", "exp"])
def test_bad_signature_when_any_signed_field_changes(field: str) -> None:
    obj = wire_object(sealed())
    replacements: dict[str, Any] = {
        "from": MALLORY.did,
        "to": MALLORY.did,
        "beh": "/mesh/deployment/commit",
        "nonce": "0" * 32,
        "iat": NOW_MS - 1,
        "exp": NOW_MS + 1,
    }
    obj[field] = replacements[field]
    assert rejection(canonical_json(obj), accept_recipients={BOB.did, MALLORY.did}) == (
        "bad_signature"
    )


def test_sender_mismatch_when_another_identity_signed() -> None:
    data = sealed(MALLORY)
    with pytest.raises(EnvelopeRejected, match=MALLORY.did) as caught:
        fixed_clock().open(data, accept_recipients={BOB.did}, expected_sender=ALICE.did)
    assert caught.value.code == "sender_mismatch"


def test_recipient_mismatch() -> None:
    data = sealed(recipient=MALLORY.did)
    assert rejection(data, accept_recipients={BOB.did, TOPIC}) == "recipient_mismatch"


def test_recipient_mismatch_for_an_unjoined_topic() -> None:
    assert rejection(sealed(recipient="topic:other")) == "recipient_mismatch"


def test_bad_lifetime_when_exp_is_not_after_iat() -> None:
    obj = wire_object(sealed())
    obj["exp"] = obj["iat"]
    assert rejection(resigned(obj, ALICE)) == "bad_lifetime"
    obj["exp"] = obj["iat"] - 1000
    assert rejection(resigned(obj, ALICE)) == "bad_lifetime"


def test_bad_lifetime_when_longer_than_the_maximum() -> None:
    data = sealed(ttl_s=301)
    with pytest.raises(EnvelopeRejected, match=r"301\.0 s exceeds the 300\.0 s") as caught:
        fixed_clock().open(data, accept_recipients={BOB.did})
    assert caught.value.code == "bad_lifetime"
    assert fixed_clock().open(sealed(ttl_s=300), accept_recipients={BOB.did})


def test_not_yet_valid_beyond_the_clock_skew() -> None:
    data = sealed(now_ms=NOW_MS + 45_000)
    with pytest.raises(EnvelopeRejected, match=r"issued 45\.0 s in the future") as caught:
        fixed_clock().open(data, accept_recipients={BOB.did})
    assert caught.value.code == "not_yet_valid"


def test_issue_time_within_the_clock_skew_is_accepted() -> None:
    data = sealed(now_ms=NOW_MS + 29_000)
    assert fixed_clock().open(data, accept_recipients={BOB.did}).issued_at_ms == NOW_MS + 29_000


def test_expired_says_how_long_ago() -> None:
    data = sealed(now_ms=NOW_MS - 42_300, ttl_s=30)
    with pytest.raises(EnvelopeRejected, match=r"expired 12\.3 s ago") as caught:
        fixed_clock().open(data, accept_recipients={BOB.did})
    assert caught.value.code == "expired"


def test_expired_at_the_exact_expiry() -> None:
    data = sealed(now_ms=NOW_MS - 30_000, ttl_s=30)
    assert rejection(data) == "expired"
    one_ms_left = sealed(now_ms=NOW_MS - 29_999, ttl_s=30)
    assert fixed_clock().open(one_ms_left, accept_recipients={BOB.did})


def test_checks_run_in_the_documented_order() -> None:
    """An envelope wrong in several ways reports the earliest failing check."""
    obj = wire_object(sealed(MALLORY, recipient=MALLORY.did, now_ms=NOW_MS - 400_000, ttl_s=600))
    lifetime_and_expiry = resigned(obj, MALLORY)
    assert rejection(lifetime_and_expiry, accept_recipients={MALLORY.did}) == "bad_lifetime"
    assert rejection(lifetime_and_expiry) == "recipient_mismatch"
    assert rejection(lifetime_and_expiry, expected_sender=ALICE.did) == "sender_mismatch"
    obj["payload"] = {"forged": True}
    assert rejection(canonical_json(obj), expected_sender=ALICE.did) == "bad_signature"
    obj["from"] = "did:key:zzz"
    assert rejection(canonical_json(obj)) == "bad_sender"
    obj["extra"] = 1
    assert rejection(canonical_json(obj)) == "malformed"


@pytest.mark.parametrize(
    "kwargs",
    [{"max_bytes": 0}, {"max_ttl_s": 0}, {"clock_skew_s": -1}, {"max_ttl_s": float("nan")}],
)
def test_verifier_rejects_nonsense_policy(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EnvelopeVerifier(**kwargs)


def test_verifier_without_a_cache_still_refuses_replays() -> None:
    verifier = EnvelopeVerifier(clock=lambda: NOW_MS / 1000)
    data = sealed()
    verifier.open(data, accept_recipients={BOB.did})
    assert rejection(data, verifier) == "replayed"
