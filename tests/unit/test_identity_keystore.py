"""The key store: home resolution, key file documents, and private atomic key files."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from computemesh.identity import (
    Identity,
    export_identity,
    identity_from_document,
    identity_to_document,
    load_identity,
    load_or_create_identity,
    resolve_home,
    save_identity,
)
from computemesh.identity.keystore import (
    DEFAULT_HOME,
    ENV_HOME,
    KEY_FILE_FORMAT,
    KEY_FILE_NAME,
)
from computemesh.models.errors import IdentityError


@pytest.fixture
def no_umask() -> Iterator[None]:
    """Run with umask 0 so file modes come from the code, not the environment."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# resolve_home -----------------------------------------------------------------------------


def test_resolve_home_prefers_the_explicit_argument(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "from-env"))
    assert resolve_home(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_home(str(tmp_path / "explicit-str")) == tmp_path / "explicit-str"


def test_resolve_home_uses_the_environment_next(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "from-env"))
    assert resolve_home() == tmp_path / "from-env"


def test_resolve_home_falls_back_to_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(ENV_HOME, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Path("~/.computemesh") == DEFAULT_HOME
    assert resolve_home() == tmp_path / ".computemesh"
    monkeypatch.setenv(ENV_HOME, "")
    assert resolve_home() == tmp_path / ".computemesh"


def test_resolve_home_expands_user_and_makes_paths_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)
    assert resolve_home("~/mesh") == tmp_path / "user" / "mesh"
    assert resolve_home("relative") == tmp_path / "relative"
    monkeypatch.setenv(ENV_HOME, "~/env-mesh")
    assert resolve_home() == tmp_path / "user" / "env-mesh"


# key file documents ------------------------------------------------------------------------


def test_identity_document_round_trips() -> None:
    identity = Identity.generate()
    doc = identity_to_document(identity)
    assert doc["format"] == KEY_FILE_FORMAT
    assert doc["type"] == "Ed25519"
    assert doc["did"] == identity.did
    assert doc["public_key_hex"] == identity.public_key.hex()
    assert doc["seed_hex"] == identity.seed.hex()
    assert isinstance(doc["created_at"], str)
    assert doc["created_at"].endswith("Z")
    assert identity_from_document(doc).did == identity.did


def tampered(doc: dict[str, object], **changes: object) -> dict[str, object]:
    return {**doc, **changes}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "computemesh-identity/2"}, "format"),
        ({"type": "X25519"}, "type"),
        ({"seed_hex": "00" * 31}, "seed_hex"),
        ({"seed_hex": "AB" * 32}, "seed_hex"),
        ({"seed_hex": 7}, "seed_hex"),
        ({"public_key_hex": "00" * 32}, "public_key_hex does not belong"),
        ({"public_key_hex": "zz" * 32}, "public_key_hex"),
        ({"did": Identity.generate().did}, "does not belong"),
        ({"did": None}, "did"),
        ({"created_at": 12}, "created_at"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_identity_from_document_rejects_invalid_documents(
    changes: dict[str, object], message: str
) -> None:
    doc = tampered(identity_to_document(Identity.generate()), **changes)
    with pytest.raises(IdentityError, match=message) as caught:
        identity_from_document(doc)
    assert caught.value.code == "bad_identity_file"


@pytest.mark.parametrize("doc", [None, [], "identity", 3])
def test_identity_from_document_rejects_non_objects(doc: object) -> None:
    with pytest.raises(IdentityError) as caught:
        identity_from_document(doc)
    assert caught.value.code == "bad_identity_file"


def test_identity_from_document_rejects_a_missing_field() -> None:
    doc = identity_to_document(Identity.generate())
    del doc["public_key_hex"]
    with pytest.raises(IdentityError, match="public_key_hex"):
        identity_from_document(doc)


# key files --------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_umask")
def test_save_creates_a_private_home_and_key_file(tmp_path: Path) -> None:
    home = tmp_path / "parent" / "home"
    identity = Identity.generate()
    path = save_identity(home, identity)
    assert path == home / KEY_FILE_NAME
    assert mode_of(home) == 0o700
    assert mode_of(path) == 0o600
    assert load_identity(home).seed == identity.seed
    assert json.loads(path.read_text())["did"] == identity.did


def test_save_leaves_an_existing_home_mode_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    save_identity(tmp_path, Identity.generate())
    assert mode_of(tmp_path) == 0o750


def test_save_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    first, second = Identity.generate(), Identity.generate()
    save_identity(tmp_path, first)
    with pytest.raises(IdentityError) as caught:
        save_identity(tmp_path, second)
    assert caught.value.code == "identity_exists"
    assert load_identity(tmp_path).did == first.did
    save_identity(tmp_path, second, overwrite=True)
    assert load_identity(tmp_path).did == second.did


@pytest.mark.usefixtures("no_umask")
def test_save_with_overwrite_keeps_mode_0600(tmp_path: Path) -> None:
    save_identity(tmp_path, Identity.generate())
    path = save_identity(tmp_path, Identity.generate(), overwrite=True)
    assert mode_of(path) == 0o600


def test_save_is_atomic_when_writing_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    original = Identity.generate()
    path = save_identity(tmp_path, original)
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(IdentityError) as caught:
        save_identity(tmp_path, Identity.generate(), overwrite=True)
    assert caught.value.code == "identity_write_failed"
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE_NAME]


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    save_identity(tmp_path, Identity.generate())
    save_identity(tmp_path, Identity.generate(), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE_NAME]


def test_save_into_a_file_path_fails_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(IdentityError) as caught:
        save_identity(blocker, Identity.generate())
    assert caught.value.code == "identity_write_failed"


def test_load_reports_a_missing_identity(tmp_path: Path) -> None:
    with pytest.raises(IdentityError) as caught:
        load_identity(tmp_path)
    assert caught.value.code == "no_identity"


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"\xff\xfe\x00", b"[]", b'{"format": "computemesh-identity/1"}'],
    ids=["empty", "not-json", "not-utf8", "array", "incomplete"],
)
def test_load_rejects_unusable_files(tmp_path: Path, content: bytes) -> None:
    (tmp_path / KEY_FILE_NAME).write_bytes(content)
    with pytest.raises(IdentityError) as caught:
        load_identity(tmp_path)
    assert caught.value.code == "bad_identity_file"
    assert KEY_FILE_NAME in caught.value.message


def test_load_rejects_a_key_file_whose_did_does_not_match_its_seed(tmp_path: Path) -> None:
    path = save_identity(tmp_path, Identity.generate())
    doc = json.loads(path.read_text())
    doc["did"] = Identity.generate().did
    path.write_text(json.dumps(doc))
    with pytest.raises(IdentityError, match="does not belong") as caught:
        load_identity(tmp_path)
    assert caught.value.code == "bad_identity_file"


def test_load_rejects_a_key_file_whose_seed_was_swapped(tmp_path: Path) -> None:
    path = save_identity(tmp_path, Identity.generate())
    doc = json.loads(path.read_text())
    doc["seed_hex"] = Identity.generate().seed.hex()
    path.write_text(json.dumps(doc))
    with pytest.raises(IdentityError) as caught:
        load_identity(tmp_path)
    assert caught.value.code == "bad_identity_file"


def test_load_rejects_an_unreadable_key_file(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE_NAME).mkdir()
    with pytest.raises(IdentityError) as caught:
        load_identity(tmp_path)
    assert caught.value.code == "bad_identity_file"


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    home = tmp_path / "home"
    created = load_or_create_identity(home)
    assert (home / KEY_FILE_NAME).is_file()
    assert load_or_create_identity(home).did == created.did


def test_load_or_create_does_not_replace_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE_NAME).write_text("{broken")
    with pytest.raises(IdentityError) as caught:
        load_or_create_identity(tmp_path)
    assert caught.value.code == "bad_identity_file"
    assert (tmp_path / KEY_FILE_NAME).read_text() == "{broken"


@pytest.mark.usefixtures("no_umask")
def test_export_writes_a_private_backup_in_the_key_file_format(tmp_path: Path) -> None:
    identity = Identity.generate()
    backup = export_identity(identity, tmp_path / "backup.json")
    assert mode_of(backup) == 0o600
    restored = identity_from_document(json.loads(backup.read_text()))
    assert restored.seed == identity.seed


def test_export_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "backup.json"
    target.write_text("precious")
    with pytest.raises(IdentityError) as caught:
        export_identity(Identity.generate(), target)
    assert caught.value.code == "identity_exists"
    assert target.read_text() == "precious"


def test_export_into_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(IdentityError) as caught:
        export_identity(Identity.generate(), tmp_path / "missing" / "backup.json")
    assert caught.value.code == "identity_write_failed"
    assert not (tmp_path / "missing").exists()
