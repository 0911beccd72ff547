"""The bubblewrap command line and the host facts it is built from."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from computemesh.executor import ProcessExecutor, SandboxLimits
from computemesh.executor.sandbox import (
    SANDBOX_PATH,
    HostLayout,
    RootEntry,
    SandboxConfig,
    build_bwrap_argv,
    detect_host_layout,
    find_bwrap,
    sandbox_env,
    synthetic_etc_files,
    tmpfs_bytes_for,
)
from computemesh.models.errors import ExecutionError

DEBIAN_LAYOUT = HostLayout(
    root_entries=(
        RootEntry("/bin", "usr/bin"),
        RootEntry("/lib", "usr/lib"),
        RootEntry("/lib64", "usr/lib64"),
        RootEntry("/sbin", "usr/sbin"),
    ),
    etc_entries=("/etc/ld.so.cache", "/etc/alternatives"),
)


def config(**overrides: object) -> SandboxConfig:
    values: dict[str, object] = {
        "bwrap": "/usr/bin/bwrap",
        "work_source": "/srv/jobs/j1/work",
        "command": ["python3", "-c", "print(1)"],
        "env": sandbox_env({"SEED": "7"}),
        "layout": DEBIAN_LAYOUT,
        "tmpfs_bytes": 64 * 1024 * 1024,
        "info_fd": 9,
        "data_fds": {"/etc/passwd": 10, "/etc/group": 11},
    }
    values.update(overrides)
    return SandboxConfig(**values)  # type: ignore[arg-type]


def option_values(argv: list[str], option: str, arity: int) -> list[tuple[str, ...]]:
    """Every occurrence of ``option`` with its ``arity`` arguments (options part only)."""
    options = argv[: argv.index("--")]
    return [tuple(options[i + 1 : i + 1 + arity]) for i, arg in enumerate(options) if arg == option]


def test_namespaces_and_process_flags() -> None:
    argv = build_bwrap_argv(config())
    assert argv[0] == "/usr/bin/bwrap"
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent"):
        assert flag in argv
    assert "--new-session" in argv and "--as-pid-1" in argv
    assert "--share-net" not in argv
    assert option_values(argv, "--uid", 1) == [("1000",)]
    assert option_values(argv, "--gid", 1) == [("1000",)]
    assert option_values(argv, "--hostname", 1) == [("sandbox",)]
    assert option_values(argv, "--info-fd", 1) == [("9",)]


def test_only_system_directories_are_bound_read_only() -> None:
    argv = build_bwrap_argv(config())
    assert option_values(argv, "--ro-bind", 2) == [
        ("/usr", "/usr"),
        ("/etc/ld.so.cache", "/etc/ld.so.cache"),
        ("/etc/alternatives", "/etc/alternatives"),
    ]
    assert option_values(argv, "--symlink", 2) == [
        ("usr/bin", "/bin"),
        ("usr/lib", "/lib"),
        ("usr/lib64", "/lib64"),
        ("usr/sbin", "/sbin"),
    ]
    assert option_values(argv, "--bind", 2) == [("/srv/jobs/j1/work", "/work")]
    assert ("/", "/") not in option_values(argv, "--ro-bind", 2)
    assert "--dev-bind" not in argv


def test_real_directories_are_bound_not_symlinked() -> None:
    layout = HostLayout(
        root_entries=(RootEntry("/lib64"), RootEntry("/bin", "usr/bin")), etc_entries=()
    )
    argv = build_bwrap_argv(config(layout=layout))
    assert ("/lib64", "/lib64") in option_values(argv, "--ro-bind", 2)
    assert option_values(argv, "--symlink", 2) == [("usr/bin", "/bin")]


def test_scratch_space_and_generated_etc_files() -> None:
    argv = build_bwrap_argv(config())
    assert option_values(argv, "--proc", 1) == [("/proc",)]
    assert option_values(argv, "--dev", 1) == [("/dev",)]
    assert option_values(argv, "--tmpfs", 1) == [("/tmp",), ("/dev/shm",)]
    assert option_values(argv, "--size", 1) == [(str(64 * 1024 * 1024),)] * 2
    assert option_values(argv, "--ro-bind-data", 2) == [("11", "/etc/group"), ("10", "/etc/passwd")]
    assert option_values(argv, "--chdir", 1) == [("/work",)]


def test_root_is_remounted_read_only_after_everything_is_in_place() -> None:
    argv = build_bwrap_argv(config())
    options = argv[: argv.index("--")]
    remounts = [i for i, arg in enumerate(options) if arg == "--remount-ro"]
    assert [options[i + 1] for i in remounts] == ["/dev", "/"]
    last_mount = max(
        i for i, arg in enumerate(options) if arg in ("--bind", "--tmpfs", "--ro-bind-data")
    )
    assert remounts[-1] > last_mount


def test_environment_is_cleared_then_set() -> None:
    argv = build_bwrap_argv(config())
    options = argv[: argv.index("--")]
    clear = options.index("--clearenv")
    assert clear < options.index("--setenv")
    assert dict((n, v) for n, v in option_values(argv, "--setenv", 2)) == {
        "PATH": SANDBOX_PATH,
        "HOME": "/work",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "SEED": "7",
    }


def test_command_follows_the_separator_verbatim() -> None:
    argv = build_bwrap_argv(config(command=["--help", "--bind", "/", "/x"]))
    assert argv[argv.index("--") + 1 :] == ["--help", "--bind", "/", "/x"]


def test_job_env_may_override_base_variables() -> None:
    env = sandbox_env({"PATH": "/work/bin:/usr/bin", "X": "1"})
    assert env["PATH"] == "/work/bin:/usr/bin" and env["X"] == "1" and env["HOME"] == "/work"
    assert sandbox_env({}, home="/srv/w")["HOME"] == "/srv/w"


def test_synthetic_etc_files_name_only_the_job_user() -> None:
    files = synthetic_etc_files()
    assert files["/etc/passwd"] == b"job:x:1000:1000:job:/work:/bin/sh\n"
    assert files["/etc/group"] == b"job:x:1000:\n"
    assert b"localhost" in files["/etc/hosts"]
    assert b"root" not in files["/etc/passwd"]


def test_tmpfs_size_follows_the_file_size_limit() -> None:
    limits = SandboxLimits(wall_time_s=1, cpu_time_s=1, memory_mb=64, max_file_mb=10)
    assert tmpfs_bytes_for(limits) == 10 * 1024 * 1024


def test_detect_host_layout_matches_the_host() -> None:
    layout = detect_host_layout()
    for entry in layout.root_entries:
        if entry.target is not None:
            assert os.path.islink(entry.path) and os.readlink(entry.path) == entry.target
        else:
            assert os.path.isdir(entry.path) and not os.path.islink(entry.path)
    assert all(os.path.exists(path) for path in layout.etc_entries)


def test_find_bwrap_checks_an_explicit_path(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    assert find_bwrap(str(fake)) is None
    fake.write_text("#!/bin/sh\n")
    assert find_bwrap(str(fake)) is None
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert find_bwrap(str(fake)) == str(fake)


def test_executor_refuses_to_start_without_bubblewrap(tmp_path: Path) -> None:
    with pytest.raises(ExecutionError) as caught:
        ProcessExecutor(sandbox=True, bwrap_path=str(tmp_path / "missing"))
    assert caught.value.code == "sandbox_missing"
    assert caught.value.hint == "install bubblewrap or start the node with --insecure-no-sandbox"


def test_executor_without_sandbox_needs_no_bubblewrap(tmp_path: Path) -> None:
    executor = ProcessExecutor(sandbox=False, bwrap_path=str(tmp_path / "missing"))
    assert executor.name == "process" and executor.bwrap is None
