"""Compiled wasm modules, kept by the sha256 of their source so each is compiled once.

Two bounded levels, both holding serialized artifacts (``Module.serialize``) rather than
``Module`` objects, because a module belongs to one engine and every run has its own:

* memory: least recently used first out, bounded by total bytes and by entries;
* disk (optional): ``<directory>/<artifact tag>/<sha256>.cwasm``, written atomically
  (temporary file, then rename), bounded by total bytes; the least recently used files
  (by modification time, refreshed on each hit) are deleted first.

A serialized artifact is native code that is loaded without being checked again, so the
directory must be writable by the node alone: it is created with mode 0700 and never
holds anything a job supplied except through ``compile_module``. An artifact that does
not load (another wasmtime version, a damaged file) is deleted and the source compiled
again. Thread-safe: ``load`` may be called from several threads at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from wasmtime import Engine, Module, WasmtimeError

from computemesh.executor.wasm_module import artifact_tag, compile_module

log = logging.getLogger(__name__)

ARTIFACT_SUFFIX = ".cwasm"


@dataclass
class CacheStats:
    """How ``load`` found each module; counters only grow."""

    memory_hits: int = 0
    disk_hits: int = 0
    compiles: int = 0


class ModuleCache:
    """Compiled modules by source sha256, in memory and (when ``directory``) on disk."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        max_memory_bytes: int = 64 * 1024 * 1024,
        max_memory_entries: int = 256,
        max_disk_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.max_memory_bytes = max_memory_bytes
        self.max_memory_entries = max_memory_entries
        self.max_disk_bytes = max_disk_bytes
        self.stats = CacheStats()
        self.directory: Path | None = None
        if directory is not None:
            self.directory = directory / artifact_tag()
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(directory, 0o700)
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_bytes = 0
        self._lock = threading.Lock()

    def load(self, engine: Engine, source: bytes) -> Module:
        """The module for ``source`` (binary or WAT), compiled for ``engine``.

        Raises ExecutionError (code "invalid_module") when the source does not compile.
        """
        key = hashlib.sha256(source).hexdigest()
        module = self._from_memory(engine, key)
        if module is None:
            module = self._from_disk(engine, key)
        if module is None:
            module = compile_module(engine, source)
            artifact = bytes(module.serialize())
            with self._lock:
                self.stats.compiles += 1
            self._remember(key, artifact)
            self._write(key, artifact)
        return module

    def _from_memory(self, engine: Engine, key: str) -> Module | None:
        with self._lock:
            artifact = self._memory.get(key)
            if artifact is None:
                return None
            self._memory.move_to_end(key)
            self.stats.memory_hits += 1
        return Module.deserialize(engine, artifact)

    def _from_disk(self, engine: Engine, key: str) -> Module | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            artifact = path.read_bytes()
            module = Module.deserialize(engine, artifact)
        except FileNotFoundError:
            return None
        except (OSError, WasmtimeError) as exc:
            log.warning("dropping compiled module %s that does not load: %s", path.name, exc)
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        with self._lock:
            self.stats.disk_hits += 1
        self._remember(key, artifact)
        return module

    def _remember(self, key: str, artifact: bytes) -> None:
        if len(artifact) > self.max_memory_bytes:
            return
        with self._lock:
            previous = self._memory.pop(key, None)
            if previous is not None:
                self._memory_bytes -= len(previous)
            self._memory[key] = artifact
            self._memory_bytes += len(artifact)
            while (
                self._memory_bytes > self.max_memory_bytes
                or len(self._memory) > self.max_memory_entries
            ):
                _, dropped = self._memory.popitem(last=False)
                self._memory_bytes -= len(dropped)

    def _write(self, key: str, artifact: bytes) -> None:
        path = self._path(key)
        if path is None or len(artifact) > self.max_disk_bytes:
            return
        temporary = path.with_name(f".{key}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(artifact)
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("cannot store compiled module %s: %s", path.name, exc)
            temporary.unlink(missing_ok=True)
            return
        self._trim_disk()

    def _trim_disk(self) -> None:
        """Delete the least recently used artifacts until the directory fits its bound."""
        assert self.directory is not None
        entries: list[tuple[float, int, Path]] = []
        for path in self.directory.glob(f"*{ARTIFACT_SUFFIX}"):
            with contextlib.suppress(OSError):
                info = path.stat()
                entries.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_disk_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key}{ARTIFACT_SUFFIX}"
