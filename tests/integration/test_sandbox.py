"""The process executor on the real bubblewrap sandbox, including hostile jobs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from computemesh.executor import (
    ExecutionRequest,
    ExecutionResult,
    ProcessExecutor,
    SandboxLimits,
    bubblewrap_available,
    run_to_completion,
)
from computemesh.executor.base import ExecutionHandle
from computemesh.models.errors import ExecutionError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not bubblewrap_available(), reason="bubblewrap (bwrap) is not installed"),
    pytest.mark.timeout(60),
]

LIMITS = SandboxLimits(wall_time_s=10, cpu_time_s=10, memory_mb=256, max_processes=32)


def request(
    command: list[str],
    *,
    limits: SandboxLimits = LIMITS,
    inputs: list[tuple[str, bytes, bool]] | None = None,
    outputs: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> ExecutionRequest:
    return ExecutionRequest(
        job_id=f"job-{secrets.token_hex(4)}",
        command=command,
        env=env or {},
        inputs=inputs or [],
        outputs=outputs or [],
        limits=limits,
    )


def python(code: str, **kwargs: object) -> ExecutionRequest:
    return request(["python3", "-c", code], **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def work_root(tmp_path: Path) -> Path:
    return tmp_path / "work"


@pytest.fixture
def executor() -> ProcessExecutor:
    return ProcessExecutor(sandbox=True)


def leftover_processes(uid: int | None) -> list[psutil.Process]:
    """Our own descendants, plus any process still running under the job's uid."""
    found = psutil.Process().children(recursive=True)
    if uid is not None:
        found += [
            p
            for p in psutil.process_iter(["uids"])
            if p.info["uids"] and p.info["uids"].real == uid
        ]
    return [p for p in found if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


async def run_tracked(
    executor: ProcessExecutor, req: ExecutionRequest, work_root: Path
) -> tuple[ExecutionResult, ExecutionHandle]:
    """Run a job step by step, checking that nothing of it is left afterwards."""
    handle = await executor.prepare(req, work_root)
    try:
        await executor.start(handle)
        result = await executor.wait(handle)
        assert leftover_processes(handle.run_as_uid) == []
        return result, handle
    finally:
        await executor.cleanup(handle)
        assert not handle.job_dir.exists()


async def assert_still_works(executor: ProcessExecutor, work_root: Path) -> None:
    result = await run_to_completion(executor, request(["echo", "still fine"]), work_root)
    assert result.status == "completed"
    assert result.stdout == b"still fine\n"


async def test_simple_command_stdout_and_output_hash(
    executor: ProcessExecutor, work_root: Path
) -> None:
    script = (
        b'#!/bin/sh\nread line < in.txt\necho "got $line"\nprintf \'%s-out\' "$line" > out/o.txt\n'
    )
    req = request(
        ["./run.sh"],
        inputs=[("run.sh", script, True), ("in.txt", b"hello\n", False)],
        outputs=["out/o.txt", "missing.txt"],
        env={"GREETING": "hi"},
    )
    handle = await executor.prepare(req, work_root)
    (handle.work_dir / "out").mkdir()
    if handle.run_as_uid is not None:
        os.chown(handle.work_dir / "out", handle.run_as_uid, handle.run_as_uid)
    await executor.start(handle)
    result = await executor.wait(handle)
    await executor.cleanup(handle)
    assert (result.status, result.exit_code, result.reason) == (
        "completed",
        0,
        "exited with code 0",
    )
    assert result.stdout == b"got hello\n"
    assert [o.path for o in result.outputs] == ["out/o.txt"]
    assert result.outputs[0].sha256 == hashlib.sha256(b"hello-out").hexdigest()
    assert (result.outputs[0].size, result.outputs[0].data) == (9, b"hello-out")
    assert result.usage.wall_s > 0


async def test_environment_identity_and_view(executor: ProcessExecutor, work_root: Path) -> None:
    code = (
        "import os, pwd, socket\n"
        "print(os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name)\n"
        "print(os.getcwd(), os.environ['HOME'], os.environ['TMPDIR'], os.environ['MY_VAR'])\n"
        "print(sorted(k for k in os.environ))\n"
        "print(socket.gethostname(), sorted(os.listdir('/')))\n"
    )
    result = await run_to_completion(executor, python(code, env={"MY_VAR": "x"}), work_root)
    assert result.status == "completed", result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "1000 1000 job"
    assert lines[1] == "/work /work /tmp x"
    assert lines[2] == str(sorted(["PATH", "HOME", "TMPDIR", "LANG", "MY_VAR", "PWD"]))
    hostname, _, listing = lines[3].partition(" ")
    assert hostname == "sandbox"
    for hidden in ("root", "home", "var", "run", "sys", "srv", "opt", "mnt"):
        assert f"'{hidden}'" not in listing


async def test_network_is_unreachable(executor: ProcessExecutor, work_root: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        f"for address in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n"
        "    try:\n"
        "        socket.create_connection(address, timeout=2).close()\n"
        "        print('connected', address)\n"
        "    except OSError as exc:\n"
        "        print('blocked', address, exc.errno)\n"
    )
    try:
        result = await run_to_completion(executor, python(code), work_root)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert result.status == "completed", result.stderr
    assert b"connected" not in result.stdout
    assert result.stdout.count(b"blocked") == 2


@pytest.fixture
def host_secrets() -> Iterator[list[Path]]:
    """Secret files in host places the sandbox must not see."""
    token = secrets.token_hex(4)
    dirs = [Path(f"/root/cmesh-secret-{token}"), Path(f"/work/cmesh-secret-{token}")]
    made: list[Path] = []
    for directory in dirs:
        with contextlib.suppress(OSError):
            directory.mkdir()
            (directory / "secret.txt").write_text("top secret\n")
            made.append(directory)
    yield [d / "secret.txt" for d in made]
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)


async def test_host_files_are_invisible_and_read_only(
    executor: ProcessExecutor, work_root: Path, host_secrets: list[Path]
) -> None:
    if not host_secrets:
        pytest.skip("cannot create secret files under /root or /work")
    token = secrets.token_hex(4)
    targets = [f"/usr/x-{token}", f"/etc/x-{token}", f"/root/x-{token}", f"/x-{token}"]
    script = "".join(f"echo pwned > {t} && echo WROTE {t}\n" for t in targets)
    script += "".join(f"cat {s} && echo READ {s}\n" for s in host_secrets)
    script += f"ls {work_root} && echo READ work root\n"
    result = await run_to_completion(executor, request(["sh", "-c", script]), work_root)
    assert b"WROTE" not in result.stdout and b"READ" not in result.stdout
    assert b"top secret" not in result.stdout
    assert b"Read-only file system" in result.stderr
    for target in targets:
        assert not os.path.exists(target)
    await assert_still_works(executor, work_root)


async def test_memory_bomb_is_killed(executor: ProcessExecutor, work_root: Path) -> None:
    limits = SandboxLimits(wall_time_s=10, cpu_time_s=10, memory_mb=128)
    code = "chunks = [bytearray(1024 * 1024) for _ in range(1024)]\nprint('allocated 1 GiB')"
    start = time.monotonic()
    result, _ = await run_tracked(executor, python(code, limits=limits), work_root)
    assert time.monotonic() - start < 10  # before the wall limit: the memory limit struck
    assert result.status == "killed"
    assert "memory limit 128 MiB" in result.reason
    assert b"allocated" not in result.stdout
    await assert_still_works(executor, work_root)


async def test_infinite_loop_times_out_and_leaves_nothing(
    executor: ProcessExecutor, work_root: Path
) -> None:
    limits = SandboxLimits(wall_time_s=1.5, cpu_time_s=30, memory_mb=256)
    script = "sleep 300 & sleep 300 & while :; do :; done"
    start = time.monotonic()
    result, _ = await run_tracked(executor, request(["sh", "-c", script], limits=limits), work_root)
    elapsed = time.monotonic() - start
    assert result.status == "timeout"
    assert result.reason == "exceeded wall time limit of 1.5 s"
    assert result.exit_code is None
    assert 1.4 < elapsed < 30  # ended by the limit, not by the 300 s sleepers
    assert result.usage.cpu_s > 0.1
    await assert_still_works(executor, work_root)


async def test_cpu_time_limit(executor: ProcessExecutor, work_root: Path) -> None:
    limits = SandboxLimits(wall_time_s=20, cpu_time_s=1, memory_mb=256)
    result, _ = await run_tracked(executor, python("while True: pass", limits=limits), work_root)
    assert result.status == "killed"
    assert "cpu time limit of 1.0 s" in result.reason
    assert 0.9 < result.usage.cpu_s < 3
    assert result.usage.wall_s < 15  # ended by the CPU limit, long before the 20 s wall limit
    await assert_still_works(executor, work_root)


async def test_fork_bomb_is_contained(executor: ProcessExecutor, work_root: Path) -> None:
    limits = SandboxLimits(wall_time_s=3, cpu_time_s=10, memory_mb=256, max_processes=32)
    code = (
        "import os, time\n"
        "forked = 0\n"
        "for _ in range(2000):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    forked += 1\n"
        "print(forked, flush=True)\n"
        "time.sleep(60)\n"
    )
    result, _ = await run_tracked(executor, python(code, limits=limits), work_root)
    assert result.status == "timeout"
    forked = int(result.stdout.decode().strip())
    assert 0 < forked < 32
    await assert_still_works(executor, work_root)


async def test_shell_fork_bomb_is_contained(executor: ProcessExecutor, work_root: Path) -> None:
    limits = SandboxLimits(wall_time_s=2, cpu_time_s=10, memory_mb=256, max_processes=32)
    bomb = request(["sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 60"], limits=limits)
    handle = await executor.prepare(bomb, work_root)
    await executor.start(handle)
    waiter = asyncio.create_task(executor.wait(handle))
    peak = 0
    while not waiter.done():
        with contextlib.suppress(psutil.Error):
            peak = max(peak, len(psutil.Process().children(recursive=True)))
        await asyncio.sleep(0.05)
    result = await waiter
    assert leftover_processes(handle.run_as_uid) == []
    await executor.cleanup(handle)
    assert result.status == "timeout"
    assert 1 < peak <= 32 + 1
    await assert_still_works(executor, work_root)


async def test_output_flood_is_truncated_without_buffering(
    executor: ProcessExecutor, work_root: Path
) -> None:
    limits = SandboxLimits(wall_time_s=20, cpu_time_s=20, memory_mb=256, max_output_bytes=1000)
    rss_before = psutil.Process().memory_info().rss
    req = request(["sh", "-c", "head -c 1G /dev/zero; yes error | head -c 300M >&2"], limits=limits)
    result, _ = await run_tracked(executor, req, work_root)
    rss_growth = psutil.Process().memory_info().rss - rss_before
    assert result.status == "completed", result.reason
    assert result.stdout == b"\0" * 1000 and result.stdout_truncated
    assert len(result.stderr) == 1000 and result.stderr_truncated
    assert rss_growth < 64 * 1024 * 1024
    await assert_still_works(executor, work_root)


async def test_endless_output_times_out_truncated(
    executor: ProcessExecutor, work_root: Path
) -> None:
    limits = SandboxLimits(wall_time_s=1, cpu_time_s=20, memory_mb=256, max_output_bytes=4096)
    result, _ = await run_tracked(executor, request(["yes"], limits=limits), work_root)
    assert result.status == "timeout"
    assert len(result.stdout) == 4096 and result.stdout_truncated
    assert not result.stderr_truncated


async def test_stop_kills_the_tree(executor: ProcessExecutor, work_root: Path) -> None:
    req = request(["sh", "-c", "sleep 100 & sleep 100 & sleep 100"])
    handle = await executor.prepare(req, work_root)
    await executor.start(handle)
    waiter = asyncio.create_task(executor.wait(handle))
    await asyncio.sleep(0.3)
    await executor.stop(handle)
    result = await asyncio.wait_for(waiter, 5)
    assert (result.status, result.reason) == ("killed", "stopped before it finished")
    assert leftover_processes(handle.run_as_uid) == []
    await executor.stop(handle)
    await executor.cleanup(handle)
    await executor.cleanup(handle)
    assert not handle.job_dir.exists()


async def test_cancelling_run_to_completion_stops_the_job(
    executor: ProcessExecutor, work_root: Path
) -> None:
    task = asyncio.create_task(run_to_completion(executor, request(["sleep", "100"]), work_root))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftover_processes(None) == []
    assert list(work_root.iterdir()) == []


async def test_symlinked_output_leading_out_is_not_collected(
    executor: ProcessExecutor, work_root: Path
) -> None:
    script = "ln -s /etc/passwd leak.txt; echo hi > real.txt; ln -s real.txt alias.txt; mkfifo f"
    outputs = ["leak.txt", "real.txt", "alias.txt", "f"]
    req = request(["sh", "-c", script], outputs=outputs)
    result = await run_to_completion(executor, req, work_root)
    assert result.status == "completed", result.stderr
    assert [(o.path, o.data) for o in result.outputs] == [
        ("real.txt", b"hi\n"),
        ("alias.txt", b"hi\n"),
    ]


async def test_reachable_work_root_runs_without_staging(executor: ProcessExecutor) -> None:
    root = Path("/tmp") / f"cmesh-open-{secrets.token_hex(4)}"
    root.mkdir(mode=0o755)
    try:
        req = request(["sh", "-c", "echo ok > out.txt"], outputs=["out.txt"])
        result = await run_to_completion(executor, req, root)
    finally:
        shutil.rmtree(root)
    assert result.status == "completed"
    assert result.outputs[0].data == b"ok\n"


async def test_usage_reports_job_cpu_and_memory(executor: ProcessExecutor, work_root: Path) -> None:
    code = (
        "import time\n"
        "block = bytearray(150 * 1024 * 1024)\n"
        "block[::4096] = b'x' * len(block[::4096])\n"
        "end = time.process_time() + 0.5\n"
        "while time.process_time() < end: pass\n"
    )
    result = await run_to_completion(executor, python(code), work_root)
    assert result.status == "completed", result.stderr
    assert result.usage.cpu_s >= 0.5
    assert result.usage.max_rss_kb >= 150 * 1024


async def test_concurrent_jobs_are_isolated_from_each_other(
    executor: ProcessExecutor, work_root: Path
) -> None:
    code = "import os, time; print(os.listdir('.')); time.sleep(0.3); open('mine', 'w').write('x')"

    async def one(index: int) -> ExecutionResult:
        req = python(code, inputs=[(f"in-{index}", b"", False)], outputs=["mine"])
        return await run_to_completion(executor, req, work_root)

    results = await asyncio.gather(*(one(i) for i in range(6)))
    for index, result in enumerate(results):
        assert result.status == "completed", result.stderr
        assert result.stdout.decode().strip() == str([f"in-{index}"])
        assert [o.path for o in result.outputs] == ["mine"]
    assert list(work_root.iterdir()) == []


async def test_unusable_paths_are_refused_before_anything_runs(
    executor: ProcessExecutor, work_root: Path
) -> None:
    for bad in (
        request(["true"], inputs=[("../escape", b"", False)]),
        request(["true"], outputs=["/etc/passwd"]),
        request(["true"], env={"BAD=NAME": "x"}),
        request([]),
    ):
        with pytest.raises(ExecutionError):
            await run_to_completion(executor, bad, work_root)
    assert not (work_root.parent / "escape").exists()


async def test_ten_gigabytes_of_output_are_counted_not_kept(
    executor: ProcessExecutor, work_root: Path
) -> None:
    limits = SandboxLimits(wall_time_s=120, cpu_time_s=120, memory_mb=256, max_output_bytes=4096)
    rss_before = psutil.Process().memory_info().rss
    req = request(["sh", "-c", "head -c 10G /dev/zero"], limits=limits)
    result, _ = await run_tracked(executor, req, work_root)
    assert result.status == "completed", result.reason
    assert len(result.stdout) == 4096 and result.stdout_truncated
    assert result.usage.bytes_out == 10 * 1024**3
    assert psutil.Process().memory_info().rss - rss_before < 64 * 1024 * 1024
    await assert_still_works(executor, work_root)
