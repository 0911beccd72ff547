"""Work directories: path checks, inputs, output collection and removal."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from computemesh.executor.workdir import (
    check_env,
    checked_relative_path,
    collect_outputs,
    create_job_dir,
    is_inside,
    remove_tree,
    write_inputs,
)
from computemesh.models.errors import ExecutionError


@pytest.mark.parametrize("path", ["a.txt", "dir/a.txt", "a/b/c", ".hidden", "a..b"])
def test_relative_paths_inside_are_accepted(path: str) -> None:
    assert checked_relative_path(path, "input") == path


@pytest.mark.parametrize(
    "path", ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", ".", "a\\b", "a\x00b", "x/.."]
)
def test_paths_that_escape_or_are_not_normal_are_refused(path: str) -> None:
    with pytest.raises(ExecutionError) as caught:
        checked_relative_path(path, "output")
    assert caught.value.code == "invalid_path"


def test_env_names_and_values_are_checked() -> None:
    check_env({"A_1": "x", "_B": ""})
    for bad in ({"1A": "x"}, {"A=B": "x"}, {"A": "x\x00y"}, {"": "x"}):
        with pytest.raises(ExecutionError):
            check_env(bad)


def test_job_dir_layout_and_modes(tmp_path: Path) -> None:
    job_dir, work_dir = create_job_dir(tmp_path / "root", "job/../../evil id")
    assert job_dir.parent == tmp_path / "root"
    assert job_dir.name.startswith("job_.._.._evil_id-")
    assert work_dir == job_dir / "work"
    assert stat.S_IMODE(job_dir.stat().st_mode) == 0o711
    assert stat.S_IMODE(work_dir.stat().st_mode) == 0o700
    other, _ = create_job_dir(tmp_path / "root", "job/../../evil id")
    assert other != job_dir


def test_inputs_are_written_with_modes_and_parents(tmp_path: Path) -> None:
    _, work = create_job_dir(tmp_path, "j")
    write_inputs(work, [("bin/run.sh", b"#!/bin/sh\n", True), ("data/in.txt", b"abc", False)], None)
    assert (work / "data" / "in.txt").read_bytes() == b"abc"
    assert stat.S_IMODE((work / "bin" / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((work / "data" / "in.txt").stat().st_mode) == 0o644


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_inputs_belong_to_the_job_uid(tmp_path: Path) -> None:
    _, work = create_job_dir(tmp_path, "j")
    write_inputs(work, [("a/b.txt", b"x", False)], 1_900_000_001)
    for path in (work, work / "a", work / "a" / "b.txt"):
        assert (path.stat().st_uid, path.stat().st_gid) == (1_900_000_001, 1_900_000_001)


@pytest.mark.parametrize(
    "inputs",
    [
        [("../x", b"", False)],
        [("/etc/x", b"", False)],
        [("a.txt", b"1", False), ("a.txt", b"2", False)],
        [("a", b"file", False), ("a/b", b"under a file", False)],
        [("a/b", b"x", False), ("a", b"dir already", False)],
    ],
)
def test_bad_inputs_are_refused(tmp_path: Path, inputs: list[tuple[str, bytes, bool]]) -> None:
    _, work = create_job_dir(tmp_path, "j")
    with pytest.raises(ExecutionError) as caught:
        write_inputs(work, inputs, None)
    assert caught.value.code == "invalid_path"
    assert not (tmp_path / "x").exists()


def test_is_inside_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "out").symlink_to("/etc/passwd")
    (tmp_path / "w" / "ok").symlink_to("real")
    assert not is_inside(tmp_path / "w", tmp_path / "w" / "out")
    assert is_inside(tmp_path / "w", tmp_path / "w" / "ok")


def test_outputs_are_hashed_and_inlined_when_small(tmp_path: Path) -> None:
    (tmp_path / "small.txt").write_bytes(b"hello")
    (tmp_path / "big.bin").write_bytes(b"x" * 3000)
    found = collect_outputs(tmp_path, ["small.txt", "big.bin", "missing.txt"], 1000)
    assert [(o.path, o.size, o.data) for o in found] == [
        ("small.txt", 5, b"hello"),
        ("big.bin", 3000, None),
    ]
    assert found[1].sha256 == hashlib.sha256(b"x" * 3000).hexdigest()


def test_outputs_that_are_not_regular_files_inside_are_skipped(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    work = tmp_path / "work"
    (work / "dir").mkdir(parents=True)
    (work / "real.txt").write_text("mine")
    (work / "escape").symlink_to(secret)
    (work / "dangling").symlink_to(work / "nowhere")
    (work / "alias").symlink_to("real.txt")
    (work / "via-dir").symlink_to("/etc")
    os.mkfifo(work / "fifo")
    wanted = ["escape", "dangling", "alias", "dir", "fifo", "via-dir/passwd", "real.txt"]
    found = collect_outputs(work, wanted, 1000)
    assert [(o.path, o.data) for o in found] == [("alias", b"mine"), ("real.txt", b"mine")]


def test_remove_tree_copes_with_locked_directories_and_symlinks(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir(mode=0o751)
    keep.chmod(0o751)
    (keep / "precious").write_text("do not touch")
    job = tmp_path / "job"
    (job / "a" / "b").mkdir(parents=True)
    (job / "a" / "b" / "f").write_text("x")
    (job / "link").symlink_to(keep)
    (job / "a" / "b").chmod(0)
    (job / "a").chmod(0)
    remove_tree(job)
    assert not job.exists()
    assert (keep / "precious").read_text() == "do not touch"
    assert stat.S_IMODE(keep.stat().st_mode) == 0o751
    remove_tree(job)
