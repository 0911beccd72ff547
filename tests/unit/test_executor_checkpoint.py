"""Checkpoint archives: deterministic packing, safe unpacking, signed verification, bounds."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from computemesh.executor.checkpoint import pack_directory, unpack_archive
from computemesh.executor.sandbox import SandboxConfig, build_bwrap_argv, detect_host_layout
from computemesh.identity import Identity
from computemesh.models.errors import ExecutionError, VerificationError
from computemesh.models.market import Checkpoint, ResourceUsage
from computemesh.protocol.checkpoints import checkpoint_payload, sign_checkpoint, verify_checkpoint


def fill(root: Path, mtime: int) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text("bee")
    (root / "sub" / "a.json").write_text('{"step": 3}')
    for path in (root / "b.txt", root / "sub" / "a.json", root / "sub"):
        os.utime(path, (mtime, mtime))


def test_same_content_gives_the_same_bytes(tmp_path: Path) -> None:
    fill(tmp_path / "one", 1_000)
    fill(tmp_path / "two", 2_000_000)
    first = pack_directory(tmp_path / "one")
    assert first == pack_directory(tmp_path / "two")
    (tmp_path / "two" / "b.txt").write_text("bee!")
    assert first != pack_directory(tmp_path / "two")


def test_archive_round_trips_and_leaves_out_symlinks(tmp_path: Path) -> None:
    fill(tmp_path / "src", 5)
    (tmp_path / "src" / "escape").symlink_to("/etc/passwd")
    restored = tmp_path / "dst"
    restored.mkdir()
    unpack_archive(pack_directory(tmp_path / "src"), restored, None)
    assert (restored / "sub" / "a.json").read_text() == '{"step": 3}'
    assert not os.path.lexists(restored / "escape")


def test_too_large_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 4096)
    with pytest.raises(ExecutionError, match="too large"):
        pack_directory(tmp_path, max_bytes=2048)


def tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        member.size = len(data) if member.isreg() else 0
        archive.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "kind"),
    [("../outside", tarfile.REGTYPE), ("/abs", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)],
)
def test_hostile_archives_are_refused(tmp_path: Path, name: str, kind: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = "/etc/passwd"
    with pytest.raises(ExecutionError, match="invalid checkpoint"):
        unpack_archive(tar_with(member, b"x"), tmp_path, None)
    assert list(tmp_path.iterdir()) == []


def test_garbage_is_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(ExecutionError, match="invalid checkpoint"):
        unpack_archive(b"not a tar" * 100, tmp_path, None)


def signed(archive: bytes) -> tuple[Identity, dict[str, object]]:
    import hashlib

    provider = Identity.generate()
    body = Checkpoint(
        contract_id="a" * 32,
        job_id="b" * 32,
        provider=provider.did,
        seq=0,
        sha256=hashlib.sha256(archive).hexdigest(),
        size=len(archive),
        created_at_ms=1,
        usage=ResourceUsage(wall_s=1.0, cpu_s=1.0, max_rss_kb=0),
    )
    return provider, checkpoint_payload(sign_checkpoint(provider, body), archive)


def test_checkpoint_verifies_and_tampering_is_named(tmp_path: Path) -> None:
    fill(tmp_path, 1)
    archive = pack_directory(tmp_path)
    provider, payload = signed(archive)
    assert verify_checkpoint(payload, signer=provider.did).archive == archive
    forged = dict(payload, archive_b64=checkpoint_payload({}, archive + b"\0")["archive_b64"])
    with pytest.raises(VerificationError, match="bytes, the document says"):
        verify_checkpoint(forged)
    other = Identity.generate()
    with pytest.raises(VerificationError, match="signed by"):
        verify_checkpoint(payload, signer=other.did)
    with pytest.raises(VerificationError, match="not the one asked for"):
        verify_checkpoint(payload, sha256="0" * 64)


def test_sandbox_binds_the_checkpoint_dir_read_write() -> None:
    config = SandboxConfig(
        bwrap="/usr/bin/bwrap",
        work_source="/j/work",
        checkpoint_source="/j/checkpoint",
        command=["true"],
        env={},
        layout=detect_host_layout(),
        tmpfs_bytes=1 << 20,
        info_fd=3,
    )
    argv = build_bwrap_argv(config)
    index = argv.index("/j/checkpoint")
    assert argv[index - 1 : index + 2] == ["--bind", "/j/checkpoint", "/checkpoint"]
