"""Sealing and opening signed envelopes (format: ``identity.wire``).

``EnvelopeVerifier.open`` checks, in order, and raises ``EnvelopeRejected`` with the first
failing check's code: ``oversized``, ``malformed``, ``bad_sender``, ``bad_signature``,
``sender_mismatch``, ``recipient_mismatch``, ``bad_lifetime``, ``not_yet_valid``,
``expired``, ``replayed``.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from computemesh.identity.canonical import b64url_encode, canonical_json
from computemesh.identity.did import public_key_from_did
from computemesh.identity.keys import Identity, verify_signature
from computemesh.identity.replay import ReplayCache
from computemesh.identity.wire import (
    ENVELOPE_VERSION,
    TOPIC_PREFIX,
    Envelope,
    parse_envelope,
    signing_input,
    validate_behavior,
    validate_recipient,
)
from computemesh.models.errors import EnvelopeRejected, IdentityError

__all__ = [
    "DEFAULT_MAX_ENVELOPE_BYTES",
    "DEFAULT_TTL_S",
    "ENVELOPE_VERSION",
    "TOPIC_PREFIX",
    "Envelope",
    "EnvelopeVerifier",
    "ReplayCache",
    "parse_envelope",
    "seal",
    "validate_behavior",
    "validate_recipient",
]

DEFAULT_MAX_ENVELOPE_BYTES = 1024 * 1024
DEFAULT_TTL_S = 30.0
DEFAULT_MAX_TTL_S = 300.0
DEFAULT_CLOCK_SKEW_S = 30.0
NONCE_BYTES = 16


# Sealing ----------------------------------------------------------------------------------


def seal(
    identity: Identity,
    *,
    recipient: str,
    behavior: str,
    payload: Mapping[str, Any],
    ttl_s: float = DEFAULT_TTL_S,
    now_ms: int | None = None,
) -> bytes:
    """Sign a message from ``identity`` and return its wire bytes.

    ``now_ms`` overrides the issue time (ms since the epoch); the envelope expires
    ``ttl_s`` seconds later. Raises ``ValueError`` for a malformed recipient or behaviour,
    a ``payload`` that is not a mapping JSON can encode, a ``ttl_s`` that is not a positive
    finite number, or a ``now_ms`` that is not a non-negative int.
    """
    validate_recipient(recipient)
    validate_behavior(behavior)
    if not isinstance(payload, Mapping):
        raise ValueError("payload must be a mapping")
    issued_at_ms = _current_ms() if now_ms is None else _require_timestamp(now_ms)
    unsigned = {
        "v": ENVELOPE_VERSION,
        "from": identity.did,
        "to": recipient,
        "beh": behavior,
        "nonce": secrets.token_hex(NONCE_BYTES),
        "iat": issued_at_ms,
        "exp": issued_at_ms + _lifetime_ms(ttl_s),
        "payload": dict(payload),
    }
    signature = identity.sign(signing_input(unsigned))
    return canonical_json({**unsigned, "sig": b64url_encode(signature)})


def _current_ms() -> int:
    return int(time.time() * 1000)


def _require_timestamp(now_ms: object) -> int:
    if isinstance(now_ms, bool) or not isinstance(now_ms, int) or now_ms < 0:
        raise ValueError("now_ms must be a non-negative int of ms since the epoch")
    return now_ms


def _lifetime_ms(ttl_s: float) -> int:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
        raise ValueError("ttl_s must be a number of seconds")
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError("ttl_s must be positive and finite")
    return max(1, round(ttl_s * 1000))


# Verifying --------------------------------------------------------------------------------


class EnvelopeVerifier:
    """Opens wire bytes into trusted ``Envelope`` objects, or refuses them.

    Holds the receiver's policy: size limit, longest accepted lifetime, tolerated clock
    skew and the replay cache (``None`` gives this verifier a cache of its own).
    """

    def __init__(
        self,
        *,
        replay_cache: ReplayCache | None = None,
        max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
        max_ttl_s: float = DEFAULT_MAX_TTL_S,
        clock_skew_s: float = DEFAULT_CLOCK_SKEW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Raises ``ValueError`` for a non-positive ``max_bytes`` or ``max_ttl_s``, or a
        negative ``clock_skew_s``."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if not max_ttl_s > 0:
            raise ValueError("max_ttl_s must be positive")
        if not clock_skew_s >= 0:
            raise ValueError("clock_skew_s must not be negative")
        self.replay_cache = ReplayCache() if replay_cache is None else replay_cache
        self.max_bytes = max_bytes
        self.max_ttl_s = max_ttl_s
        self.clock_skew_s = clock_skew_s
        self.clock = clock

    def open(
        self,
        data: bytes,
        *,
        accept_recipients: Collection[str],
        expected_sender: str | None = None,
    ) -> Envelope:
        """Verify ``data`` and return its envelope; raise ``EnvelopeRejected`` otherwise.

        Checks in this order, the first failure giving the code: ``oversized`` (more than
        ``max_bytes``, before parsing), ``malformed`` (see ``parse_envelope``),
        ``bad_sender`` (``from`` is not a valid did:key), ``bad_signature``,
        ``sender_mismatch`` (``expected_sender`` given and different), ``recipient_mismatch``
        (``to`` not in ``accept_recipients``), ``bad_lifetime`` (``exp <= iat`` or a
        lifetime above ``max_ttl_s``), ``not_yet_valid`` (issued more than the clock skew in
        the future), ``expired`` (``exp`` at or before now), ``replayed`` (the sender's
        nonce was already accepted; only envelopes that passed every other check are
        remembered).
        """
        self._check_size(data)
        envelope = parse_envelope(data)
        self._check_sender(envelope)
        self._check_signature(envelope)
        self._check_expected_sender(envelope, expected_sender)
        self._check_recipient(envelope, accept_recipients)
        self._check_lifetime(envelope)
        now_ms = self.clock() * 1000.0
        self._check_time(envelope, now_ms)
        self._check_replay(envelope, now_ms)
        return envelope

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.max_bytes:
            raise EnvelopeRejected(
                f"envelope is {len(data)} bytes, over the {self.max_bytes}-byte limit",
                code="oversized",
            )

    @staticmethod
    def _check_sender(envelope: Envelope) -> None:
        try:
            public_key_from_did(envelope.sender)
        except IdentityError as exc:
            raise EnvelopeRejected(
                f"sender is not a valid did:key: {exc.message}", code="bad_sender"
            ) from exc

    @staticmethod
    def _check_signature(envelope: Envelope) -> None:
        signed = signing_input(envelope.unsigned_object())
        if not verify_signature(envelope.sender, signed, envelope.signature):
            raise EnvelopeRejected(
                f"signature does not verify for sender {envelope.sender}", code="bad_signature"
            )

    @staticmethod
    def _check_expected_sender(envelope: Envelope, expected_sender: str | None) -> None:
        if expected_sender is not None and envelope.sender != expected_sender:
            raise EnvelopeRejected(
                f"signed by {envelope.sender}, expected {expected_sender}",
                code="sender_mismatch",
            )

    @staticmethod
    def _check_recipient(envelope: Envelope, accept_recipients: Collection[str]) -> None:
        if envelope.recipient not in accept_recipients:
            raise EnvelopeRejected(
                f"addressed to {envelope.recipient}, which is not a recipient here",
                code="recipient_mismatch",
            )

    def _check_lifetime(self, envelope: Envelope) -> None:
        lifetime_ms = envelope.expires_at_ms - envelope.issued_at_ms
        if lifetime_ms <= 0:
            raise EnvelopeRejected(
                f"expires {-lifetime_ms / 1000:.3f} s before or when it was issued",
                code="bad_lifetime",
            )
        if lifetime_ms > self.max_ttl_s * 1000.0:
            raise EnvelopeRejected(
                f"lifetime {lifetime_ms / 1000:.1f} s exceeds the {self.max_ttl_s:.1f} s maximum",
                code="bad_lifetime",
            )

    def _check_time(self, envelope: Envelope, now_ms: float) -> None:
        ahead_ms = envelope.issued_at_ms - now_ms
        if ahead_ms > self.clock_skew_s * 1000.0:
            raise EnvelopeRejected(
                f"issued {ahead_ms / 1000:.1f} s in the future "
                f"(tolerated clock skew {self.clock_skew_s:.1f} s)",
                code="not_yet_valid",
            )
        if envelope.expires_at_ms <= now_ms:
            raise EnvelopeRejected(
                f"expired {(now_ms - envelope.expires_at_ms) / 1000:.1f} s ago",
                code="expired",
            )

    def _check_replay(self, envelope: Envelope, now_ms: float) -> None:
        fresh = self.replay_cache.check_and_remember(
            envelope.sender, envelope.nonce, envelope.expires_at_ms, math.floor(now_ms)
        )
        if not fresh:
            raise EnvelopeRejected(
                f"nonce {envelope.nonce} from {envelope.sender} was already accepted",
                code="replayed",
            )
