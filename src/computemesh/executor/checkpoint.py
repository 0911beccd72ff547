"""A job's checkpoint directory and the deterministic archives it is snapshotted into.

A job that declares checkpointing gets a directory of its own beside its work dir
(``<job dir>/checkpoint``), named to it by ``CMESH_CHECKPOINT_DIR``. ``pack_directory``
turns it into a tar archive that depends on content only: entries sorted by path, every
mtime, uid and gid zero, owner names empty, modes 0644 (files) and 0755 (directories), so
the same content always gives the same bytes and the same sha256. ``unpack_archive``
restores one before the job starts.

The directory is the job's and is not trusted: packing never follows a symlink and keeps
regular files and directories only. Archives are not trusted either: unpacking accepts
only regular files and directories at normalised relative paths, within a byte bound, and
writes them itself (``tarfile``'s extraction is never used).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import stat
import tarfile
from pathlib import Path

from computemesh.executor.base import ExecutionHandle, ExecutionRequest
from computemesh.models.errors import ExecutionError
from computemesh.models.job import check_relative_path

log = logging.getLogger(__name__)

CHECKPOINT_ENV = "CMESH_CHECKPOINT_DIR"
CHECKPOINT_DIR_NAME = "checkpoint"
SANDBOX_CHECKPOINT_DIR = "/checkpoint"
MAX_ARCHIVE_BYTES = 512 * 1024
"""Archives travel base64 in signed envelopes (1 MiB by default), so they are bounded."""

MAX_ENTRIES = 1024


def archive_digest(data: bytes) -> str:
    """Lowercase hex sha256 of an archive: its content address."""
    return hashlib.sha256(data).hexdigest()


def make_checkpoint_dir(job_dir: Path, owner: int | None) -> Path:
    """Create the empty checkpoint directory of a job (owned by ``owner`` when given)."""
    path = job_dir / CHECKPOINT_DIR_NAME
    path.mkdir(mode=0o700)
    if owner is not None:
        os.chown(path, owner, owner)
    return path


def prepare_checkpoint_dir(
    job_dir: Path, request: ExecutionRequest, owner: int | None
) -> Path | None:
    """The checkpoint directory of a job that checkpoints, restored from ``request.restore``.

    None for a job that does not checkpoint. Raises ExecutionError as ``unpack_archive``.
    """
    if not request.checkpointing:
        if request.restore is not None:
            raise _invalid("a checkpoint to restore was given to a job that does not checkpoint")
        return None
    path = make_checkpoint_dir(job_dir, owner)
    if request.restore is not None:
        unpack_archive(request.restore, path, owner)
    return path


async def snapshot(handle: ExecutionHandle) -> bytes:
    """The archive of ``handle``'s checkpoint directory (``Executor.checkpoint``)."""
    if handle.checkpoint_dir is None or handle.state == "cleaned":
        raise ExecutionError(
            f"job {handle.request.job_id} has no checkpoint directory", code="no_checkpoint"
        )
    return await asyncio.to_thread(pack_directory, handle.checkpoint_dir)


def pack_directory(root: Path, max_bytes: int = MAX_ARCHIVE_BYTES) -> bytes:
    """The deterministic tar archive of ``root`` (see the module docstring).

    Raises ExecutionError (code "checkpoint_too_large") when the archive would exceed
    ``max_bytes`` or hold more than ``MAX_ENTRIES`` entries.
    """
    entries = sorted(_walk(root))
    if len(entries) > MAX_ENTRIES:
        raise _too_large(f"{len(entries)} entries, at most {MAX_ENTRIES}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for relative, is_dir in entries:
            _add_entry(archive, root, relative, is_dir, max_bytes)
            if buffer.tell() > max_bytes:
                raise _too_large(f"more than {max_bytes} bytes")
    data = buffer.getvalue()
    if len(data) > max_bytes:
        raise _too_large(f"{len(data)} bytes, at most {max_bytes}")
    return data


def unpack_archive(
    data: bytes, destination: Path, owner: int | None, max_bytes: int = MAX_ARCHIVE_BYTES
) -> int:
    """Write the files of archive ``data`` into the empty directory ``destination``.

    Returns how many entries were restored. Raises ExecutionError (code
    "invalid_checkpoint") for an archive that is too large, unreadable, or holds anything
    but regular files and directories at safe relative paths.
    """
    if len(data) > max_bytes:
        raise _invalid(f"archive is {len(data)} bytes, at most {max_bytes}")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            members = archive.getmembers()
            _check_members(members)
            for member in members:
                _restore(archive, member, destination, owner)
    except tarfile.TarError as exc:
        raise _invalid(f"not a readable tar archive: {exc}") from exc
    return len(members)


def _walk(root: Path) -> list[tuple[str, bool]]:
    found: list[tuple[str, bool]] = []
    for directory, subdirs, files in os.walk(root, followlinks=False):
        base = Path(directory).relative_to(root)
        for name in [*subdirs, *files]:
            path = Path(directory) / name
            mode = os.lstat(path).st_mode
            relative = (base / name).as_posix()
            if stat.S_ISDIR(mode):
                found.append((relative, True))
            elif stat.S_ISREG(mode):
                found.append((relative, False))
            else:
                log.info("checkpoint entry %s is not a file or directory; left out", relative)
    return found


def _add_entry(
    archive: tarfile.TarFile, root: Path, relative: str, is_dir: bool, max_bytes: int
) -> None:
    info = tarfile.TarInfo(relative)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if is_dir:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        archive.addfile(info)
        return
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(root / relative, flags)
    except OSError as exc:
        log.info("checkpoint entry %s cannot be read (%s); left out", relative, exc)
        return
    with os.fdopen(fd, "rb") as handle:
        content = handle.read(max_bytes + 1)
    if len(content) > max_bytes:
        raise _too_large(f"{relative} alone is more than {max_bytes} bytes")
    info.mode = 0o644
    info.size = len(content)
    archive.addfile(info, io.BytesIO(content))


def _check_members(members: list[tarfile.TarInfo]) -> None:
    if len(members) > MAX_ENTRIES:
        raise _invalid(f"{len(members)} entries, at most {MAX_ENTRIES}")
    seen: set[str] = set()
    for member in members:
        try:
            check_relative_path(member.name)
        except ValueError as exc:
            raise _invalid(f"entry {member.name!r}: {exc}") from exc
        if not (member.isreg() or member.isdir()):
            raise _invalid(f"entry {member.name!r} is neither a file nor a directory")
        if member.name in seen:
            raise _invalid(f"entry {member.name!r} appears twice")
        seen.add(member.name)


def _restore(
    archive: tarfile.TarFile, member: tarfile.TarInfo, destination: Path, owner: int | None
) -> None:
    path = destination / member.name
    for parent in reversed(Path(member.name).parents[:-1]):
        _ensure_dir(destination / parent, owner)
    if member.isdir():
        _ensure_dir(path, owner)
        return
    source = archive.extractfile(member)
    content = source.read() if source is not None else b""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise _invalid(f"entry {member.name!r} cannot be written: {exc}") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
        if owner is not None:
            os.fchown(fd, owner, owner)


def _ensure_dir(path: Path, owner: int | None) -> None:
    try:
        path.mkdir(mode=0o755)
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise _invalid(f"entry {path.name!r} is a file and a directory") from None
        return
    if owner is not None:
        os.chown(path, owner, owner)


def _too_large(detail: str) -> ExecutionError:
    return ExecutionError(f"the checkpoint is too large: {detail}", code="checkpoint_too_large")


def _invalid(detail: str) -> ExecutionError:
    return ExecutionError(f"invalid checkpoint archive: {detail}", code="invalid_checkpoint")
