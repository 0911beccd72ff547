"""Compiled modules are cached by source sha256, in memory and on disk, within bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from computemesh.executor.wasm_cache import ARTIFACT_SUFFIX, ModuleCache
from computemesh.executor.wasm_module import new_engine
from computemesh.models.errors import ExecutionError


def module_source(index: int) -> bytes:
    return f'(module (func (export "_start")) (func (export "f{index}")))'.encode()


def artifacts(cache: ModuleCache) -> list[Path]:
    assert cache.directory is not None
    return sorted(cache.directory.glob(f"*{ARTIFACT_SUFFIX}"))


def test_second_load_hits_memory_and_a_new_cache_hits_disk(tmp_path: Path) -> None:
    cache = ModuleCache(tmp_path)
    first = cache.load(new_engine(), module_source(1))
    second = cache.load(new_engine(), module_source(1))
    assert (cache.stats.compiles, cache.stats.memory_hits) == (1, 1)
    assert [item.name for item in first.exports] == [item.name for item in second.exports]
    assert len(artifacts(cache)) == 1
    assert (tmp_path.stat().st_mode & 0o777) == 0o700

    fresh = ModuleCache(tmp_path)
    fresh.load(new_engine(), module_source(1))
    fresh.load(new_engine(), module_source(1))
    assert (fresh.stats.compiles, fresh.stats.disk_hits, fresh.stats.memory_hits) == (0, 1, 1)


def test_memory_level_keeps_the_most_recent_entries() -> None:
    cache = ModuleCache(max_memory_entries=2)
    for index in (1, 2, 3):
        cache.load(new_engine(), module_source(index))
    cache.load(new_engine(), module_source(3))
    cache.load(new_engine(), module_source(1))
    assert (cache.stats.compiles, cache.stats.memory_hits) == (4, 1)


def test_disk_level_stays_within_its_bound(tmp_path: Path) -> None:
    probe = ModuleCache(tmp_path / "probe")
    probe.load(new_engine(), module_source(0))
    size = artifacts(probe)[0].stat().st_size
    cache = ModuleCache(tmp_path / "bounded", max_disk_bytes=int(size * 2.5))
    for index in range(5):
        cache.load(new_engine(), module_source(index))
    assert len(artifacts(cache)) == 2


def test_damaged_artifact_is_dropped_and_recompiled(tmp_path: Path) -> None:
    ModuleCache(tmp_path).load(new_engine(), module_source(1))
    cache = ModuleCache(tmp_path)
    (path,) = artifacts(cache)
    path.write_bytes(b"not a compiled module")
    cache.load(new_engine(), module_source(1))
    assert (cache.stats.disk_hits, cache.stats.compiles) == (0, 1)
    assert artifacts(cache)[0].read_bytes() != b"not a compiled module"


def test_invalid_source_is_not_cached(tmp_path: Path) -> None:
    cache = ModuleCache(tmp_path)
    with pytest.raises(ExecutionError, match="refused"):
        cache.load(new_engine(), b"(module (func")
    assert artifacts(cache) == []
