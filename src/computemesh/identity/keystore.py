"""Where an identity lives: ``identity.json`` in a computemesh home directory.

The home is, in order of precedence, the directory passed explicitly, ``$CMESH_HOME``, or
``~/.computemesh``. It is created with mode 0700 when missing.

Key file format (``identity.json``, and backups written by ``export_identity``), a UTF-8
JSON object with mode 0600::

    {
      "format": "computemesh-identity/1",
      "type": "Ed25519",
      "did": "did:key:z6Mk...",
      "public_key_hex": "<64 lowercase hex digits: the 32-byte Ed25519 public key>",
      "seed_hex": "<64 lowercase hex digits: the 32-byte Ed25519 seed; the secret>",
      "created_at": "<ISO-8601 UTC time the file was written, e.g. 2025-01-31T12:00:00Z>"
    }

``format`` and ``type`` must be exactly as shown. The seed alone determines the key:
``public_key_hex`` and ``did`` are stored for people and tools reading the file, and a file
whose ``public_key_hex`` or ``did`` does not match its seed is rejected as tampered.
``created_at`` is informational and may be absent; other fields are ignored.

Files are written atomically: a temporary file created with mode 0600 in the same
directory is filled, flushed to disk and then renamed over (or, when overwriting is not
allowed, hard-linked to) the final name, so a crash never leaves a partial key file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

from computemesh.identity.keys import Identity
from computemesh.models.errors import IdentityError

ENV_HOME = "CMESH_HOME"
DEFAULT_HOME = Path("~/.computemesh")
KEY_FILE_NAME = "identity.json"
KEY_FILE_FORMAT = "computemesh-identity/1"
KEY_TYPE = "Ed25519"

HOME_MODE = 0o700
KEY_FILE_MODE = 0o600

_HEX_32_BYTES = re.compile(r"[0-9a-f]{64}")


def resolve_home(home: str | Path | None = None) -> Path:
    """The absolute home directory: ``home`` if given, else ``$CMESH_HOME``, else the default.

    ``~`` is expanded. An empty ``$CMESH_HOME`` counts as unset. Nothing is created.
    """
    if home is None:
        home = os.environ.get(ENV_HOME) or DEFAULT_HOME
    return Path(home).expanduser().absolute()


# Documents ------------------------------------------------------------------------------


def identity_to_document(identity: Identity) -> dict[str, object]:
    """The key file document of ``identity``, stamped with the current UTC time."""
    return {
        "format": KEY_FILE_FORMAT,
        "type": KEY_TYPE,
        "did": identity.did,
        "public_key_hex": identity.public_key.hex(),
        "seed_hex": identity.seed.hex(),
        "created_at": _utc_now_iso(),
    }


def identity_from_document(doc: object) -> Identity:
    """The identity a key file document holds.

    Raises ``IdentityError`` (code ``bad_identity_file``) naming the problem when ``doc``
    is not an object, has another ``format`` or ``type``, lacks a field, has a seed or
    public key that is not 64 lowercase hex digits, or has a public key or DID that does
    not belong to its seed.
    """
    if not isinstance(doc, dict):
        raise _bad_file("an identity file must hold a JSON object")
    _require_equal(doc, "format", KEY_FILE_FORMAT)
    _require_equal(doc, "type", KEY_TYPE)
    identity = Identity.from_seed(bytes.fromhex(_require_hex_32(doc, "seed_hex")))
    if _require_hex_32(doc, "public_key_hex") != identity.public_key.hex():
        raise _bad_file("public_key_hex does not belong to seed_hex")
    did = doc.get("did")
    if not isinstance(did, str):
        raise _bad_file("did is missing or not a string")
    if did != identity.did:
        raise _bad_file(f"did {did} does not belong to seed_hex (expected {identity.did})")
    created_at = doc.get("created_at")
    if created_at is not None and not isinstance(created_at, str):
        raise _bad_file("created_at must be a string")
    return identity


def _require_equal(doc: dict[object, object], field: str, expected: str) -> None:
    value = doc.get(field)
    if value != expected:
        raise _bad_file(f"{field} must be {expected!r}, found {value!r}")


def _require_hex_32(doc: dict[object, object], field: str) -> str:
    value = doc.get(field)
    if not isinstance(value, str) or _HEX_32_BYTES.fullmatch(value) is None:
        raise _bad_file(f"{field} must be 64 lowercase hex digits (32 bytes)")
    return value


def _bad_file(message: str) -> IdentityError:
    return IdentityError(message, code="bad_identity_file")


def _utc_now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# Files ----------------------------------------------------------------------------------


def save_identity(home: Path, identity: Identity, *, overwrite: bool = False) -> Path:
    """Write ``identity`` to ``home/identity.json`` (mode 0600) and return that path.

    Creates ``home`` (mode 0700, parents as needed) when missing. Raises ``IdentityError``
    with code ``identity_exists`` when a key file is already there and ``overwrite`` is
    false (checked atomically), or ``identity_write_failed`` when the file cannot be written.
    """
    home = Path(home)
    _ensure_private_home(home)
    path = home / KEY_FILE_NAME
    _write_document_atomically(path, identity_to_document(identity), overwrite=overwrite)
    return path


def load_identity(home: Path) -> Identity:
    """The identity stored in ``home/identity.json``.

    Raises ``IdentityError`` with code ``no_identity`` when the file does not exist, or
    ``bad_identity_file`` when it cannot be read, is not UTF-8 JSON, or is not a valid
    key file document (see the module docstring).
    """
    path = Path(home) / KEY_FILE_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise IdentityError(
            f"no identity at {path}",
            code="no_identity",
            hint="create one with `cmesh id show` or restore one with `cmesh id import`",
        ) from exc
    except OSError as exc:
        raise _bad_file(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise _bad_file(f"{path} is not UTF-8 JSON: {exc}") from exc
    try:
        return identity_from_document(doc)
    except IdentityError as exc:
        raise _bad_file(f"{path}: {exc.message}") from exc


def load_or_create_identity(home: Path) -> Identity:
    """The identity in ``home``, generating and saving a new one on first use.

    Raises ``IdentityError`` like ``load_identity`` for an existing but invalid file, and
    like ``save_identity`` when a new one cannot be written. Safe against a concurrent
    creator: whichever file lands first is the one returned.
    """
    try:
        return load_identity(home)
    except IdentityError as exc:
        if exc.code != "no_identity":
            raise
    try:
        identity = Identity.generate()
        save_identity(home, identity)
    except IdentityError as exc:
        if exc.code != "identity_exists":
            raise
        return load_identity(home)
    return identity


def export_identity(identity: Identity, path: Path) -> Path:
    """Write a backup of ``identity`` to ``path`` in the key file format, mode 0600.

    The parent directory must exist. Raises ``IdentityError`` with code ``identity_exists``
    if ``path`` already exists (never overwritten), or ``identity_write_failed`` when it
    cannot be written.
    """
    path = Path(path).expanduser()
    _write_document_atomically(path, identity_to_document(identity), overwrite=False)
    return path


def _ensure_private_home(home: Path) -> None:
    """Create ``home`` with mode 0700 if it does not exist; leave an existing one alone."""
    if home.is_dir():
        return
    try:
        home.parent.mkdir(parents=True, exist_ok=True)
        home.mkdir(mode=HOME_MODE)
        os.chmod(home, HOME_MODE)
    except FileExistsError:
        if not home.is_dir():
            raise _write_failed(home, "exists and is not a directory") from None
    except OSError as exc:
        raise _write_failed(home, exc.strerror or str(exc)) from exc


def _write_document_atomically(path: Path, doc: dict[str, object], *, overwrite: bool) -> None:
    if not overwrite and path.exists():
        raise _exists(path)
    data = json.dumps(doc, indent=2, sort_keys=True).encode("utf-8") + b"\n"
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write_private_file(temp, data)
        _publish(temp, path, overwrite=overwrite)
    except OSError as exc:
        raise _write_failed(path, exc.strerror or str(exc)) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    _sync_directory(path.parent)


def _write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` (must not exist) with mode 0600, write ``data`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        os.fchmod(fd, KEY_FILE_MODE)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(temp: Path, path: Path, *, overwrite: bool) -> None:
    """Move the finished ``temp`` to ``path``; without ``overwrite``, never clobber.

    A hard link fails atomically if ``path`` exists; on filesystems without hard links,
    fall back to an existence check followed by a rename.
    """
    if overwrite:
        os.replace(temp, path)
        return
    try:
        os.link(temp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError:
        if path.exists():
            raise _exists(path) from None
        os.replace(temp, path)


def _sync_directory(directory: Path) -> None:
    """Best effort: make the rename durable by syncing the directory entry."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _exists(path: Path) -> IdentityError:
    return IdentityError(f"{path} already exists", code="identity_exists")


def _write_failed(path: Path, reason: str) -> IdentityError:
    return IdentityError(f"cannot write {path}: {reason}", code="identity_write_failed")
