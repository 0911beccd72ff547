"""Checked ONNX models kept on the provider, by sha256, least recently used evicted first.

A model enters the cache only once it has passed the sandboxed check (``onnx_runner.py
inspect``), together with the signature that check produced; a later job with the same
model (the same sha256) skips the check. The cache is the node's own directory and is
trusted: entries are not hashed again when read.

Layout: ``<root>/<sha256>.onnx`` (the model) and ``<root>/<sha256>.json`` (its
signature); an entry's size is both files together. ``max_bytes`` bounds the total: a
``put`` evicts least recently used entries (a ``get`` hit counts as a use) until the new
one fits, and an entry larger than ``max_bytes`` on its own is not kept. On start the
directory is read back, the most recently modified entries counting as the most recently
used, and anything incomplete or over the bound is removed.

Not thread-safe: use it from one event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from computemesh.executor.onnx_signature import ModelSignature

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
MODEL_SUFFIX = ".onnx"
SIGNATURE_SUFFIX = ".json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class CacheStats:
    """Counters since the cache was opened."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0


class ModelCache:
    """See the module docstring. ``get``/``put`` raise ValueError for a malformed sha256."""

    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.root = root
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._sizes: OrderedDict[str, int] = OrderedDict()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._load()
        self._evict_until(0)

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._sizes

    def get(self, sha256: str) -> ModelSignature | None:
        """The signature of a cached model (a hit, which marks it used), else None (a miss)."""
        _check_digest(sha256)
        signature = self._read_signature(sha256) if sha256 in self._sizes else None
        if signature is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self._sizes.move_to_end(sha256)
        with contextlib.suppress(OSError):
            os.utime(self._model(sha256))
        return signature

    def model_path(self, sha256: str) -> Path | None:
        """Where a cached model's bytes are, or None; does not count as a use."""
        _check_digest(sha256)
        return self._model(sha256) if sha256 in self._sizes else None

    def put(self, sha256: str, model: bytes, signature: ModelSignature) -> bool:
        """Keep ``model`` and its signature, evicting as needed; False when it cannot fit.

        The caller guarantees that ``sha256`` is the model's digest.
        """
        _check_digest(sha256)
        encoded = signature.to_json()
        size = len(model) + len(encoded)
        if size > self.max_bytes:
            return False
        self._remove(sha256)
        self._evict_until(size)
        _write_atomically(self._model(sha256), model)
        _write_atomically(self._signature(sha256), encoded)
        self._sizes[sha256] = size
        return True

    # Internals ----------------------------------------------------------------------------

    def _model(self, sha256: str) -> Path:
        return self.root / f"{sha256}{MODEL_SUFFIX}"

    def _signature(self, sha256: str) -> Path:
        return self.root / f"{sha256}{SIGNATURE_SUFFIX}"

    def _read_signature(self, sha256: str) -> ModelSignature | None:
        try:
            return ModelSignature.from_json(self._signature(sha256).read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("dropping cached model %s: %s", sha256, exc)
            self._remove(sha256)
            return None

    def _evict_until(self, incoming: int) -> None:
        """Drop least recently used entries until ``incoming`` more bytes fit."""
        while self._sizes and self.total_bytes + incoming > self.max_bytes:
            oldest = next(iter(self._sizes))
            self._remove(oldest)
            self.stats.evictions += 1

    def _remove(self, sha256: str) -> None:
        self._sizes.pop(sha256, None)
        for path in (self._model(sha256), self._signature(sha256)):
            path.unlink(missing_ok=True)

    def _load(self) -> None:
        """Index complete entries, oldest first; remove strays (partial writes included)."""
        found: list[tuple[float, str, int]] = []
        for path in self.root.iterdir():
            digest = path.name.removesuffix(MODEL_SUFFIX)
            if path.suffix == MODEL_SUFFIX and _SHA256.match(digest):
                signature = self._signature(digest)
                if signature.is_file():
                    stat = path.stat()
                    found.append((stat.st_mtime, digest, stat.st_size + signature.stat().st_size))
                    continue
            paired = path.suffix == SIGNATURE_SUFFIX and self._model(path.stem).is_file()
            if not paired and not path.is_dir():
                path.unlink(missing_ok=True)
        for _, digest, size in sorted(found):
            self._sizes[digest] = size


def _check_digest(sha256: str) -> None:
    if not _SHA256.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
