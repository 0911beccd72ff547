"""The "python" runtime: an interpreter and chosen installed packages, for sandboxed jobs.

A runtime is resolved once, when a node starts, from the interpreter the node runs on:

* **Interpreter.** The node's own (``sys.executable``, resolved). When it lies under
  ``/usr`` the sandbox already shows it and nothing is bound. Otherwise its installation
  prefix (``sys.base_prefix``: the stdlib and, for shared builds, ``libpython``) is bound
  read-only at the same path, provided the job's uid can read it. A node running as root
  runs jobs under uids of their own (see ``launch``), so a prefix under ``/root`` (mode
  0700) is out of their reach; the runtime then uses a system interpreter of the same
  minor version (``/usr/bin/python3.11``), whose ABI the installed packages share.
* **Packages.** The named distributions and everything they require (extras left out),
  found with ``importlib.metadata`` where the node imports them from. Each top-level
  entry a distribution installed (its package directories, single-file modules, vendored
  ``*.libs`` directories and its ``*.dist-info``) is bound read-only under
  ``RUNTIME_SITE_DIR``: only those entries, never the rest of the environment. A
  directory without ``__init__.py`` (a namespace such as ``google``) is bound one level
  down, so that only the distribution's own part of it shows.

The job imports from ``import_paths()``: ``RUNTIME_SITE_DIR`` in the sandbox, the host
site directories without one (nodes started with ``--insecure-no-sandbox``). Runners
start the interpreter with ``-I`` (no environment variables, no user site, no script
directory on the path) and put those paths on ``sys.path`` themselves.

A runtime is advertised as labels (``offers()``): ``python3.11`` and one
``python3.11/<name>==<version>`` per package; ``parse_offer`` reads them back.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from computemesh.executor.launch import can_switch_uid
from computemesh.executor.sandbox import ReadOnlyBind, check_read_only_bind
from computemesh.models.errors import ExecutionError
from computemesh.models.job import RuntimeSpec

RUNTIME_SITE_DIR = "/opt/computemesh/site-packages"
"""Where a runtime's packages appear inside the sandbox."""

SYSTEM_BIN_DIRS = ("/usr/bin", "/usr/local/bin")
UNBOUND_ROOT = "/usr"
"""Interpreters under this directory are visible in every sandbox already."""

NON_NAMESPACE_SUFFIXES = (".libs", ".dist-info", ".data")
RUNTIME_HINT = "install the packages in the node's environment, readable by other users"

_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_OFFER = re.compile(r"^python(\d+\.\d+)(?:/([a-z0-9][a-z0-9.-]*)==(\S+))?$")

Reader = Callable[[str], bool]


@dataclass(frozen=True)
class PackageFiles:
    """One installed distribution: normalised name, version, and where its files are.

    ``entries`` are paths relative to ``site_dir`` (top-level, or one level down in a
    namespace directory), each bound on its own.
    """

    name: str
    version: str
    site_dir: str
    entries: tuple[str, ...]


@dataclass(frozen=True)
class PythonRuntime:
    """An interpreter (``version`` is its "major.minor") and the packages jobs may import.

    ``interpreter`` is the same path inside the sandbox and on the host.
    """

    version: str
    interpreter: str
    interpreter_binds: tuple[ReadOnlyBind, ...]
    packages: tuple[PackageFiles, ...]

    def binds(self) -> tuple[ReadOnlyBind, ...]:
        """Every read-only bind the sandbox needs: the interpreter's, then each package entry."""
        seen: dict[str, ReadOnlyBind] = {}
        for package in self.packages:
            for entry in package.entries:
                destination = f"{RUNTIME_SITE_DIR}/{entry}"
                seen.setdefault(
                    destination, ReadOnlyBind(f"{package.site_dir}/{entry}", destination)
                )
        return (*self.interpreter_binds, *seen.values())

    def import_paths(self, *, sandboxed: bool) -> tuple[str, ...]:
        """The directories a job puts on ``sys.path`` to import the packages."""
        if sandboxed:
            return (RUNTIME_SITE_DIR,)
        return tuple(dict.fromkeys(package.site_dir for package in self.packages))

    def offers(self) -> tuple[str, ...]:
        """The labels a node advertises for this runtime (see the module docstring)."""
        base = python_label(self.version)
        return (base, *(f"{base}/{p.name}=={p.version}" for p in self.packages))


def python_label(version: str) -> str:
    """``"3.11"`` -> ``"python3.11"``."""
    return f"python{version}"


def parse_offer(label: str) -> tuple[str, str | None, str | None] | None:
    """``(python version, package name, package version)`` of an offer label, else None.

    ``"python3.11"`` gives ``("3.11", None, None)``; ``"python3.11/numpy==2.4.6"`` gives
    ``("3.11", "numpy", "2.4.6")``.
    """
    match = _OFFER.match(label)
    if match is None:
        return None
    return match.group(1), match.group(2), match.group(3)


def normalize_package_name(name: str) -> str:
    """A distribution name as package indexes compare them: lower case, runs of -_. as -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve_python_runtime(
    packages: Sequence[str], *, switch_uid: bool | None = None
) -> PythonRuntime:
    """The runtime of this node's interpreter with ``packages`` and their requirements.

    ``switch_uid`` says whether jobs run under uids of their own (default: when this
    process is root), which decides what they can read. Raises ExecutionError (code
    "runtime_missing") when no usable interpreter is found, or a package is not installed
    or not readable by jobs.
    """
    reads = _job_reader(can_switch_uid() if switch_uid is None else switch_uid)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    interpreter, binds = _interpreter(version, reads)
    found = package_closure(packages)
    for package in found:
        for entry in package.entries:
            if not reads(f"{package.site_dir}/{entry}"):
                raise ExecutionError(
                    f"{package.site_dir}/{entry} (package {package.name}) is not readable by jobs",
                    code="runtime_missing",
                    hint=RUNTIME_HINT,
                )
    return PythonRuntime(version, interpreter, binds, found)


def package_closure(names: Sequence[str]) -> tuple[PackageFiles, ...]:
    """``names`` and every distribution they require, sorted by name.

    Requirements for extras are left out; one guarded by another marker is followed
    when it is installed. Raises ExecutionError (code "runtime_missing") for a named or
    unconditionally required distribution that is not installed.
    """
    found: dict[str, PackageFiles] = {}
    pending = [(name, True) for name in names]
    while pending:
        name, required = pending.pop()
        key = normalize_package_name(name)
        if key in found:
            continue
        try:
            dist = importlib.metadata.distribution(key)
        except importlib.metadata.PackageNotFoundError:
            if not required:
                continue
            raise ExecutionError(
                f"python package {name} is not installed", code="runtime_missing", hint=RUNTIME_HINT
            ) from None
        found[key] = _package_files(key, dist)
        pending += _requirements(dist)
    return tuple(found[key] for key in sorted(found))


def _requirements(dist: importlib.metadata.Distribution) -> list[tuple[str, bool]]:
    """``(name, unconditional)`` of each requirement that is not for an extra."""
    wanted = []
    for requirement in dist.requires or []:
        spec, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        match = _REQUIREMENT_NAME.match(spec)
        if match is not None:
            wanted.append((match.group(1), not marker.strip()))
    return wanted


def _package_files(name: str, dist: importlib.metadata.Distribution) -> PackageFiles:
    site = Path(str(dist.locate_file("")))
    if dist.files is None:
        raise ExecutionError(
            f"python package {name} lists no files (no RECORD)", code="runtime_missing"
        )
    entries: set[str] = set()
    for file in dist.files:
        parts = Path(str(file)).parts
        if not parts or parts[0] in ("..", "/", "__pycache__"):
            continue
        top = parts[0]
        if len(parts) >= 2 and _is_namespace(site / top):
            entries.add(f"{top}/{parts[1]}")
        else:
            entries.add(top)
    existing = sorted(entry for entry in entries if os.path.lexists(site / entry))
    return PackageFiles(name, dist.version, str(site), tuple(existing))


def _is_namespace(path: Path) -> bool:
    if path.name.endswith(NON_NAMESPACE_SUFFIXES):
        return False
    return path.is_dir() and not (path / "__init__.py").exists()


def _interpreter(version: str, reads: Reader) -> tuple[str, tuple[ReadOnlyBind, ...]]:
    own = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    if _within(own, UNBOUND_ROOT):
        return own, ()
    if _within(own, prefix) and reads(own) and reads(prefix):
        bind = ReadOnlyBind(prefix, prefix)
        try:
            check_read_only_bind(bind)
        except ValueError:
            pass
        else:
            return own, (bind,)
    for directory in SYSTEM_BIN_DIRS:
        candidate = f"{directory}/python{version}"
        if os.access(candidate, os.X_OK):
            return candidate, ()
    raise ExecutionError(
        f"no python{version} interpreter that jobs can run "
        f"({own} is not readable by them and none is in {', '.join(SYSTEM_BIN_DIRS)})",
        code="runtime_missing",
        hint=f"install python{version} from the system's packages, or run the node as a user",
    )


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _job_reader(switch_uid: bool) -> Reader:
    """Whether a job can read a path: as another uid (all of "other") or as this one."""
    if not switch_uid:
        return lambda path: os.access(path, os.R_OK)
    return _readable_by_others


def _readable_by_others(path: str) -> bool:
    """True when every parent of ``path`` is searchable by others and it is readable.

    Directories must also be searchable. Symlinks are resolved first, as bwrap does.
    """
    real = Path(os.path.realpath(path))
    try:
        if any(not os.stat(parent).st_mode & stat.S_IXOTH for parent in real.parents):
            return False
        mode = os.stat(real).st_mode
    except OSError:
        return False
    needed = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
    return mode & needed == needed


def unmet_runtime(wanted: RuntimeSpec, labels: Sequence[str], executor: str) -> list[str]:
    """One sentence per part of ``wanted`` that ``labels`` (of ``executor``) lack."""
    packages: dict[str, str] = {}
    pythons: set[str] = set()
    for label in labels:
        parsed = parse_offer(label)
        if parsed is None:
            continue
        python, package, version = parsed
        pythons.add(python)
        if python == wanted.python and package is not None and version is not None:
            packages[package] = version
    if wanted.python not in pythons:
        offered = ", ".join(f"python {v}" for v in sorted(pythons)) or "no runtime"
        return [
            f"runtime: python {wanted.python} not offered by the {executor} executor ({offered})"
        ]
    reasons = []
    for requirement in wanted.packages:
        name, _, version = requirement.partition("==")
        have = packages.get(normalize_package_name(name))
        if have is None:
            reasons.append(f"runtime: package {name} not offered with python {wanted.python}")
        elif version and have != version:
            reasons.append(f"runtime: package {name}=={version} wanted, {have} offered")
    return reasons
