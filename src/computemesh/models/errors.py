"""The one error family of computemesh.

    MeshError
    ├── SpecError            a job spec or config that does not validate
    ├── EnvelopeRejected     a wire message refused before any handler ran
    ├── IdentityError        a key, DID or key file that cannot be used
    ├── TransportError       the message bus failed (timeouts included)
    ├── NoProviderError      no node could take a job (carries the reasons)
    ├── ExecutionError       a sandbox could not run a job
    └── VerificationError    a result whose signature or hashes do not check

Every error carries a stable ``code`` (used on the wire and in ``--json`` output), a
human message, an optional hint and whether retrying may help.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MeshError(Exception):
    """Base of every error computemesh raises on purpose."""

    default_code: ClassVar[str] = "mesh_error"
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        hint: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.hint = hint
        self.retryable = self.default_retryable if retryable is None else retryable

    def to_dict(self) -> dict[str, Any]:
        """The error as data, for wire replies and ``--json`` output."""
        data: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.hint:
            data["hint"] = self.hint
        return data

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class SpecError(MeshError):
    default_code = "invalid_spec"


class EnvelopeRejected(MeshError):
    """A wire message refused by the receiving runtime; ``code`` names the reason."""

    default_code = "malformed"


class IdentityError(MeshError):
    default_code = "identity_error"


class TransportError(MeshError):
    default_code = "transport_error"
    default_retryable = True


class RequestTimeout(TransportError):
    default_code = "timeout"


class NoProviderError(MeshError):
    """No provider could take a job; ``reasons`` says why, per node or per constraint."""

    default_code = "no_provider"
    default_retryable = True

    def __init__(self, message: str, *, reasons: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reasons = reasons

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["reasons"] = self.reasons
        return data


class ExecutionError(MeshError):
    default_code = "execution_error"


class VerificationError(MeshError):
    default_code = "verification_failed"


class RemoteError(MeshError):
    """An error another participant sent back as data."""

    default_code = "remote_error"
