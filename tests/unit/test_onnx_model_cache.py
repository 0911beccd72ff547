"""The provider's cache of checked ONNX models: hits, misses, LRU eviction by bytes, restarts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from computemesh.executor.model_cache import ModelCache
from computemesh.executor.onnx_signature import ModelSignature, ValueSpec

SIGNATURE = ModelSignature(
    inputs=(ValueSpec("x", "tensor(float)", "float32", (None, 4)),),
    outputs=(ValueSpec("y", "tensor(float)", "float32", (None, 2)),),
)
SIGNATURE_BYTES = len(SIGNATURE.to_json())


def model(size: int, seed: int) -> tuple[str, bytes]:
    data = bytes([seed]) * size
    return hashlib.sha256(data).hexdigest(), data


def test_a_miss_then_a_hit_are_counted(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "models", max_bytes=10_000)
    digest, data = model(100, 1)
    assert cache.get(digest) is None
    assert cache.put(digest, data, SIGNATURE)
    assert cache.get(digest) == SIGNATURE
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (1, 1, 0)
    assert cache.total_bytes == 100 + SIGNATURE_BYTES
    path = cache.model_path(digest)
    assert path is not None and path.read_bytes() == data


def test_least_recently_used_entries_are_evicted_by_bytes(tmp_path: Path) -> None:
    entry = 1000 + SIGNATURE_BYTES
    cache = ModelCache(tmp_path, max_bytes=3 * entry)
    a, b, c, d = (model(1000, seed) for seed in range(4))
    for digest, data in (a, b, c):
        assert cache.put(digest, data, SIGNATURE)
    assert cache.get(a[0]) is not None
    assert cache.put(*d, SIGNATURE)
    assert b[0] not in cache and not (tmp_path / f"{b[0]}.onnx").exists()
    assert {a[0], c[0], d[0]} == {key for key in (a[0], b[0], c[0], d[0]) if key in cache}
    assert cache.stats.evictions == 1
    assert cache.total_bytes <= cache.max_bytes
    big_digest, big = model(2000, 9)
    assert cache.put(big_digest, big, SIGNATURE)
    assert [key in cache for key in (a[0], c[0], d[0], big_digest)] == [False, False, True, True]
    assert cache.stats.evictions == 3


def test_an_entry_larger_than_the_bound_is_not_kept(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=500)
    digest, data = model(1000, 1)
    assert cache.put(digest, data, SIGNATURE) is False
    assert len(cache) == 0 and list(tmp_path.iterdir()) == []


def test_a_reopened_cache_keeps_entries_in_use_order_and_drops_strays(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10_000)
    older, newer = model(100, 1), model(100, 2)
    cache.put(*older, SIGNATURE)
    cache.put(*newer, SIGNATURE)
    os.utime(tmp_path / f"{older[0]}.onnx", (1, 1))
    (tmp_path / ".partial-write").write_bytes(b"x")
    (tmp_path / f"{'e' * 64}.onnx").write_bytes(b"model without a signature")
    reopened = ModelCache(tmp_path, max_bytes=100 + SIGNATURE_BYTES)
    assert newer[0] in reopened and older[0] not in reopened
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        f"{newer[0]}.json",
        f"{newer[0]}.onnx",
    ]


def test_an_unreadable_signature_is_a_miss_and_dropped(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10_000)
    digest, data = model(10, 1)
    cache.put(digest, data, SIGNATURE)
    (tmp_path / f"{digest}.json").write_text("{broken")
    assert cache.get(digest) is None
    assert digest not in cache and cache.stats.misses == 1


def test_keys_must_be_sha256_digests(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    for key in ("../escape", "A" * 64, "abc"):
        with pytest.raises(ValueError):
            cache.get(key)
