"""A job's private directory: creating it, writing inputs, collecting outputs, removing it.

Layout: ``<work_root>/<job id>-<random>/`` (mode 0711, owned by the node) holds
``work/`` (mode 0700, owned by the job's uid), the job's working directory.

Every path a request names is relative, normalised and must stay inside ``work/``.
After the run the directory is the job's and is not trusted: outputs are read only
when they resolve inside ``work/`` and are regular files (symlinks leading out, FIFOs,
devices and directories are skipped), and removal never follows a symlink.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from computemesh.executor.base import CollectedOutput, ExecutionRequest
from computemesh.models.errors import ExecutionError
from computemesh.models.job import ENV_NAME_PATTERN, check_relative_path

log = logging.getLogger(__name__)

HASH_CHUNK = 1024 * 1024
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def checked_relative_path(path: str, what: str) -> str:
    """``path`` when it is relative, normalised and stays inside the work directory.

    Raises ExecutionError (code "invalid_path") otherwise.
    """
    try:
        return check_relative_path(path)
    except ValueError as exc:
        raise ExecutionError(f"{what} path {path!r}: {exc}", code="invalid_path") from exc


def check_env(env: dict[str, str]) -> None:
    """Raise ExecutionError (code "invalid_env") for a name or value a process cannot take."""
    for name, value in env.items():
        if not ENV_NAME_PATTERN.match(name) or "\x00" in value:
            raise ExecutionError(f"invalid environment variable {name!r}", code="invalid_env")


def check_stdin(request: ExecutionRequest) -> str | None:
    """The input the request names as standard input, if any; raises ExecutionError
    (code "invalid_stdin") when it names a path that is not one of its inputs."""
    if request.stdin is None:
        return None
    if request.stdin not in {path for path, _, _ in request.inputs}:
        raise ExecutionError(
            f"stdin {request.stdin!r} is not one of the job's inputs",
            code="invalid_stdin",
            hint="name one of the input paths as stdin",
        )
    return request.stdin


def stdin_path(work_dir: Path, stdin: str | None) -> Path:
    """The file a job reads as standard input: ``/dev/null`` for None, else the input
    ``stdin``, which must be a regular file inside ``work_dir`` (not a symlink).

    Raises ExecutionError (code "invalid_stdin") otherwise.
    """
    if stdin is None:
        return Path(os.devnull)
    path = work_dir / checked_relative_path(stdin, "stdin")
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = 0
    if not stat.S_ISREG(mode) or not is_inside(work_dir, path.parent):
        raise ExecutionError(f"stdin {stdin!r} is not a file in the work dir", code="invalid_stdin")
    return path


def is_inside(root: Path, path: Path) -> bool:
    """True when ``path`` (resolved, symlinks followed) lies inside ``root`` (resolved)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def create_job_dir(work_root: Path, job_id: str) -> tuple[Path, Path]:
    """Create ``(job_dir, work_dir)`` under ``work_root`` (made if missing)."""
    work_root.mkdir(parents=True, exist_ok=True)
    name = _UNSAFE_NAME.sub("_", job_id)[:64] or "job"
    job_dir = work_root / f"{name}-{secrets.token_hex(6)}"
    job_dir.mkdir(mode=0o711)
    os.chmod(job_dir, 0o711)
    work_dir = job_dir / "work"
    work_dir.mkdir(mode=0o700)
    return job_dir, work_dir


def write_inputs(
    work_dir: Path, inputs: Iterable[tuple[str, bytes, bool]], owner: int | None
) -> None:
    """Write each input into ``work_dir``, creating parent directories as needed.

    Files are mode 0755 when executable, else 0644; ``owner`` (uid and gid), when given,
    owns them, the directories created and ``work_dir`` itself. Raises ExecutionError
    on a path that escapes, repeats or collides with another input.
    """
    for relative, content, executable in inputs:
        path = work_dir / checked_relative_path(relative, "input")
        for parent in reversed(path.relative_to(work_dir).parents[:-1]):
            _make_dir(work_dir / parent, owner)
        if not is_inside(work_dir, path.parent):
            raise ExecutionError(
                f"input path {relative!r} leaves the work dir", code="invalid_path"
            )
        _write_file(path, content, 0o755 if executable else 0o644, owner)
    if owner is not None:
        os.chown(work_dir, owner, owner)


def _make_dir(path: Path, owner: int | None) -> None:
    try:
        path.mkdir(mode=0o755)
    except FileExistsError:
        if not path.is_dir() or path.is_symlink():
            raise ExecutionError(
                f"input path {path.name!r} is a file", code="invalid_path"
            ) from None
        return
    if owner is not None:
        os.chown(path, owner, owner)


def _write_file(path: Path, content: bytes, mode: int, owner: int | None) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise ExecutionError(f"input {path.name!r} is given twice", code="invalid_path") from None
    except IsADirectoryError:
        raise ExecutionError(f"input {path.name!r} is a directory", code="invalid_path") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, owner, owner)


def collect_outputs(
    work_dir: Path, paths: Iterable[str], max_inline_bytes: int
) -> list[CollectedOutput]:
    """Hash each declared output that is a regular file inside ``work_dir``.

    Missing or refused outputs are left out (refusals are logged). ``data`` holds the
    bytes when the file is at most ``max_inline_bytes`` long.
    """
    collected: list[CollectedOutput] = []
    for relative in paths:
        item = _collect_one(work_dir, relative, max_inline_bytes)
        if item is not None:
            collected.append(item)
    return collected


def _collect_one(work_dir: Path, relative: str, max_inline_bytes: int) -> CollectedOutput | None:
    candidate = work_dir / relative
    if not os.path.lexists(candidate):
        return None
    if not is_inside(work_dir, candidate):
        log.warning("output %s resolves outside the work dir; not collected", relative)
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(os.path.realpath(candidate), flags)
    except OSError as exc:
        log.warning("output %s cannot be opened (%s); not collected", relative, exc)
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        log.warning("output %s is not a regular file; not collected", relative)
        return None
    with os.fdopen(fd, "rb") as handle:
        return _hash_file(handle, relative, max_inline_bytes)


def _hash_file(handle: BinaryIO, relative: str, max_inline_bytes: int) -> CollectedOutput:
    digest = hashlib.sha256()
    kept = bytearray()
    size = 0
    while chunk := handle.read(HASH_CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if size <= max_inline_bytes:
            kept += chunk
    data = bytes(kept) if size <= max_inline_bytes else None
    return CollectedOutput(path=relative, sha256=digest.hexdigest(), size=size, data=data)


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything in it, whatever modes the job left behind.

    Directories are made writable first (never through a symlink); symlinks are removed,
    not followed.
    """
    if not os.path.lexists(path):
        return
    _make_dir_usable(str(path))
    for directory, subdirs, _ in os.walk(path):
        for name in subdirs:
            _make_dir_usable(os.path.join(directory, name))
    shutil.rmtree(path, ignore_errors=True)


def _make_dir_usable(path: str) -> None:
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            os.chmod(path, 0o700)
    except OSError:
        pass
