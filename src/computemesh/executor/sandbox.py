"""The bubblewrap sandbox: finding ``bwrap`` and building its command line.

What a job sees inside the sandbox:

* ``/usr`` read-only, and ``/bin``, ``/sbin``, ``/lib``, ``/lib32``, ``/lib64``,
  ``/libx32`` as on the host: the same symlinks (``--symlink``) where the host has
  symlinks (merged-/usr systems such as Debian), read-only binds where it has
  directories. Nothing else of the host file system: no ``/home``, ``/root``, ``/var``,
  ``/work``, ``/run``, ``/sys`` or host ``/tmp``.
* Extra read-only binds the executor was configured with (``ReadOnlyBind``), for
  example a Python interpreter and the packages a runtime offers (``python_runtime``);
  each is one host file or directory at a sandbox path outside the sandbox's own
  locations (``check_read_only_bind``). Nothing is bound unless configured.
* In ``/etc`` only:
    - ``/etc/ld.so.cache`` (host, read-only): the dynamic linker's library index;
    - ``/etc/alternatives`` (host, read-only): Debian's ``/usr/bin`` symlinks
      (``awk``, ``editor``...) point into it;
    - ``/etc/passwd``, ``/etc/group`` (generated): the job's own user and group
      (uid/gid 1000, home /work) so user lookups work without revealing host accounts;
    - ``/etc/hosts``, ``/etc/nsswitch.conf`` (generated): ``localhost`` resolves from
      files, nothing else is configured;
    - for a job given network access only, ``/etc/resolv.conf`` (host, read-only) and
      ``dns`` after ``files`` for host names.
* ``/checkpoint`` read-write for a job that checkpoints (its checkpoint directory,
  named by ``CMESH_CHECKPOINT_DIR``).
* ``/work`` read-write (the job's work directory, also the current directory), a
  private size-limited tmpfs at ``/tmp`` and ``/dev/shm``, a fresh ``/proc`` (own pid
  namespace) and a minimal ``/dev`` (null, zero, full, random, urandom, tty, pts).
* Every namespace unshared (``--unshare-all``): no network but a loopback of its own,
  own pid, ipc, uts (hostname "sandbox") and cgroup namespaces, and a user namespace
  in which the job is uid/gid 1000 with no capabilities and may not create further
  user namespaces (``--disable-userns``).
  A job that declares ``network`` on a node that allows it (``SandboxConfig.
  share_network``) keeps the host's network namespace (``--share-net`` after
  ``--unshare-all``); every other namespace stays unshared.
* The root directory (``/etc`` included) and ``/dev`` are remounted read-only once
  built, so the job can write only to /work, /tmp and /dev/shm.
* ``--die-with-parent`` (the sandbox dies with the node) and ``--new-session`` (no
  access to the node's terminal).
* ``--as-pid-1``: the job's first process is the pid namespace's init and bwrap's
  direct child, so bwrap reaps it and ``wait4`` on bwrap reports the job's CPU time
  and peak memory (with bwrap's own init in between, the job's usage is lost). As
  init, the job ignores signals it has no handler for unless they come from outside
  (SIGKILL from the node always works), so the CPU limit ends it with SIGKILL and the
  file size limit shows as EFBIG errors; when it exits, the kernel kills everything
  else in the sandbox.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from computemesh.executor.base import SandboxLimits

BWRAP_LOCATIONS = ("/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap")
SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_HOSTNAME = "sandbox"
SANDBOX_WORK_DIR = "/work"
SANDBOX_CHECKPOINT_DIR = "/checkpoint"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"

ROOT_ENTRIES = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Top-level system entries mirrored from the host (as symlinks or read-only binds)."""

HOST_ETC_ENTRIES = ("/etc/ld.so.cache", "/etc/alternatives")
"""Host ``/etc`` entries bound read-only (see the module docstring for why)."""

NETWORK_ETC_ENTRIES = ("/etc/resolv.conf",)
"""Host ``/etc`` entries bound read-only for a job given network access (name service)."""

RESERVED_SANDBOX_PATHS = (
    "/work",
    "/checkpoint",
    "/tmp",
    "/dev",
    "/proc",
    "/etc",
    "/usr",
    *ROOT_ENTRIES,
)
"""Sandbox locations an extra bind may not cover or sit inside (the sandbox owns them)."""

MIB = 1024 * 1024


@dataclass(frozen=True)
class ReadOnlyBind:
    """One host path (``source``) visible read-only at ``destination`` in the sandbox."""

    source: str
    destination: str


@dataclass(frozen=True)
class RootEntry:
    """A top-level host entry: a symlink (``target`` set) or a directory to bind."""

    path: str
    target: str | None = None


@dataclass(frozen=True)
class HostLayout:
    """The parts of the host file system a sandbox needs, as found on this host."""

    root_entries: tuple[RootEntry, ...]
    etc_entries: tuple[str, ...]
    network_etc_entries: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxConfig:
    """Everything ``build_bwrap_argv`` needs; file descriptors must be passed to bwrap.

    ``work_source`` is the host path bound at /work. ``data_fds`` maps sandbox paths to
    descriptors whose content becomes a read-only file there. ``info_fd`` receives
    bwrap's JSON report with the host pid of the sandbox's init process. ``ro_binds``
    are extra host paths bound read-only (each checked by ``check_read_only_bind``).
    ``checkpoint_source``, when set, is the host path bound read-write at /checkpoint.
    ``share_network`` keeps the host's network (for a job allowed network access).
    """

    bwrap: str
    work_source: str
    command: Sequence[str]
    env: Mapping[str, str]
    layout: HostLayout
    tmpfs_bytes: int
    info_fd: int
    data_fds: Mapping[str, int] = field(default_factory=dict)
    ro_binds: Sequence[ReadOnlyBind] = ()
    checkpoint_source: str | None = None
    share_network: bool = False


def find_bwrap(path: str | None = None) -> str | None:
    """The bubblewrap executable to use, or None when there is none.

    An explicit ``path`` must be an executable file; otherwise ``bwrap`` is looked up on
    PATH and then in the usual install locations.
    """
    candidates = [path] if path else [shutil.which("bwrap"), *BWRAP_LOCATIONS]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    return None


def bubblewrap_available() -> bool:
    """True when a bubblewrap executable was found (see ``find_bwrap``)."""
    return find_bwrap() is not None


def detect_host_layout() -> HostLayout:
    """Inspect the host: which system entries exist, and which are symlinks."""
    entries: list[RootEntry] = []
    for path in ROOT_ENTRIES:
        if os.path.islink(path):
            entries.append(RootEntry(path, os.readlink(path)))
        elif os.path.isdir(path):
            entries.append(RootEntry(path))
    etc = tuple(path for path in HOST_ETC_ENTRIES if os.path.exists(path))
    network_etc = tuple(path for path in NETWORK_ETC_ENTRIES if os.path.exists(path))
    return HostLayout(root_entries=tuple(entries), etc_entries=etc, network_etc_entries=network_etc)


def sandbox_env(job_env: Mapping[str, str], *, home: str = SANDBOX_WORK_DIR) -> dict[str, str]:
    """The job's environment: the base variables, then the job's own (which may override)."""
    env = {"PATH": SANDBOX_PATH, "HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
    env.update(job_env)
    return env


def synthetic_etc_files(*, network: bool = False) -> dict[str, bytes]:
    """Generated ``/etc`` files: the sandbox user only, and localhost (then DNS, with
    ``network``)."""
    user, group = SANDBOX_UID, SANDBOX_GID
    hosts = b"files dns" if network else b"files"
    return {
        "/etc/passwd": f"job:x:{user}:{group}:job:{SANDBOX_WORK_DIR}:/bin/sh\n".encode(),
        "/etc/group": f"job:x:{group}:\n".encode(),
        "/etc/hosts": b"127.0.0.1\tlocalhost\n::1\tlocalhost\n",
        "/etc/nsswitch.conf": b"passwd: files\ngroup: files\nhosts: " + hosts + b"\n",
    }


def check_read_only_bind(bind: ReadOnlyBind) -> None:
    """Raise ValueError unless ``bind`` is safe to add to any sandbox.

    Both paths must be absolute and normalised; the destination must not be ``/``, nor
    one of ``RESERVED_SANDBOX_PATHS`` or inside one, nor contain one.
    """
    for label, path in (("source", bind.source), ("destination", bind.destination)):
        if not path.startswith("/") or os.path.normpath(path) != path or "\x00" in path:
            raise ValueError(f"bind {label} {path!r} must be an absolute, normalised path")
    destination = bind.destination
    if destination == "/":
        raise ValueError("a bind may not cover the sandbox root")
    for reserved in RESERVED_SANDBOX_PATHS:
        if _within(destination, reserved) or _within(reserved, destination):
            raise ValueError(f"bind destination {destination!r} overlaps {reserved}")


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent + "/")


def tmpfs_bytes_for(limits: SandboxLimits) -> int:
    """Size of each private tmpfs (/tmp, /dev/shm): the job's file size limit."""
    return limits.max_file_mb * MIB


def build_bwrap_argv(config: SandboxConfig) -> list[str]:
    """The full bwrap command line for one job (pure: it only reads ``config``)."""
    return [
        config.bwrap,
        *_namespace_args(share_network=config.share_network),
        *_system_args(config.layout, share_network=config.share_network),
        *_read_only_bind_args(config.ro_binds),
        *_etc_args(config.data_fds),
        *_scratch_args(config.tmpfs_bytes),
        *_checkpoint_args(config.checkpoint_source),
        *("--bind", config.work_source, SANDBOX_WORK_DIR, "--chdir", SANDBOX_WORK_DIR),
        *("--info-fd", str(config.info_fd)),
        *("--remount-ro", "/"),
        *_env_args(config.env),
        "--",
        *config.command,
    ]


def _namespace_args(*, share_network: bool) -> list[str]:
    return [
        "--unshare-all",
        *(["--share-net"] if share_network else []),
        "--unshare-user",
        "--disable-userns",
        *("--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID)),
        *("--hostname", SANDBOX_HOSTNAME),
        "--as-pid-1",
        "--die-with-parent",
        "--new-session",
    ]


def _system_args(layout: HostLayout, *, share_network: bool) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for entry in layout.root_entries:
        if entry.target is not None:
            args += ["--symlink", entry.target, entry.path]
        else:
            args += ["--ro-bind", entry.path, entry.path]
    etc = (*layout.etc_entries, *(layout.network_etc_entries if share_network else ()))
    for path in etc:
        args += ["--ro-bind", path, path]
    return args


def _read_only_bind_args(binds: Sequence[ReadOnlyBind]) -> list[str]:
    args: list[str] = []
    for bind in binds:
        args += ["--ro-bind", bind.source, bind.destination]
    return args


def _etc_args(data_fds: Mapping[str, int]) -> list[str]:
    args: list[str] = []
    for path, fd in sorted(data_fds.items()):
        args += ["--perms", "0644", "--ro-bind-data", str(fd), path]
    return args


def _scratch_args(tmpfs_bytes: int) -> list[str]:
    size = str(max(tmpfs_bytes, MIB))
    return [
        *("--proc", "/proc", "--dev", "/dev"),
        *("--size", size, "--tmpfs", "/tmp"),
        *("--size", size, "--tmpfs", "/dev/shm"),
        *("--remount-ro", "/dev"),
    ]


def _checkpoint_args(source: str | None) -> list[str]:
    return [] if source is None else ["--bind", source, SANDBOX_CHECKPOINT_DIR]


def _env_args(env: Mapping[str, str]) -> list[str]:
    args = ["--clearenv"]
    for name, value in env.items():
        args += ["--setenv", name, value]
    return args
