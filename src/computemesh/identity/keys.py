"""Ed25519 identities: a signing key and the did:key that names it."""

from __future__ import annotations

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from computemesh.identity.did import did_from_public_key, public_key_from_did
from computemesh.models.errors import IdentityError

SEED_LENGTH = 32
SIGNATURE_LENGTH = 64


class Identity:
    """One participant: an Ed25519 signing key and its DID.

    The seed is the secret; ``repr`` and ``str`` show only the DID.
    """

    __slots__ = ("_did", "_signing_key")

    def __init__(self, signing_key: SigningKey) -> None:
        self._signing_key = signing_key
        self._did = did_from_public_key(bytes(signing_key.verify_key))

    @classmethod
    def generate(cls) -> Identity:
        """A fresh identity from the operating system's random source."""
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity whose Ed25519 seed is ``seed``.

        Raises ``IdentityError`` (code ``bad_seed``) unless ``seed`` is exactly 32 bytes.
        """
        if not isinstance(seed, bytes) or len(seed) != SEED_LENGTH:
            raise IdentityError(f"an Ed25519 seed is {SEED_LENGTH} bytes", code="bad_seed")
        return cls(SigningKey(seed))

    @property
    def did(self) -> str:
        return self._did

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @property
    def seed(self) -> bytes:
        """The 32-byte secret seed; whoever holds it can act as this identity."""
        return bytes(self._signing_key)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte detached Ed25519 signature of ``data``."""
        return self._signing_key.sign(data).signature

    def __repr__(self) -> str:
        return f"Identity(did={self._did!r})"


def verify_signature(did: str, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is the key of ``did`` signing ``data``.

    Returns False, never raises, for a malformed DID, a signature of the wrong length or a
    signature that does not verify.
    """
    try:
        public_key = public_key_from_did(did)
    except IdentityError:
        return False
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LENGTH:
        return False
    try:
        VerifyKey(public_key).verify(data, signature)
    except (CryptoError, ValueError, TypeError):
        return False
    return True
