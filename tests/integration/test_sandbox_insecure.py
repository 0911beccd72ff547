"""The process executor without bubblewrap (``--insecure-no-sandbox``): limits still hold."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from computemesh.executor import (
    ExecutionRequest,
    ExecutionResult,
    ProcessExecutor,
    SandboxLimits,
    run_to_completion,
)
from computemesh.models.errors import ExecutionError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LIMITS = SandboxLimits(wall_time_s=10, cpu_time_s=10, memory_mb=256, max_processes=32)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="jobs get uids of their own only on root")


def request(
    command: list[str], limits: SandboxLimits = LIMITS, **kwargs: object
) -> ExecutionRequest:
    return ExecutionRequest(
        job_id=f"insecure-{secrets.token_hex(4)}",
        command=command,
        env=kwargs.get("env", {}),  # type: ignore[arg-type]
        inputs=kwargs.get("inputs", []),  # type: ignore[arg-type]
        outputs=kwargs.get("outputs", []),  # type: ignore[arg-type]
        limits=limits,
    )


@pytest.fixture
def executor() -> ProcessExecutor:
    return ProcessExecutor(sandbox=False)


async def run(executor: ProcessExecutor, req: ExecutionRequest, root: Path) -> ExecutionResult:
    result = await run_to_completion(executor, req, root)
    assert psutil.Process().children(recursive=True) == []
    return result


async def test_runs_in_the_work_dir_with_inputs_and_outputs(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    req = request(
        ["sh", "-c", 'test "$HOME" = "$PWD" && cat in.txt > out.txt && echo "$X"'],
        env={"X": "42"},
        inputs=[("in.txt", b"data", False)],
        outputs=["out.txt"],
    )
    result = await run(executor, req, tmp_path)
    assert (result.status, result.stdout) == ("completed", b"42\n")
    assert [(o.path, o.data) for o in result.outputs] == [("out.txt", b"data")]


async def test_missing_command_is_an_execution_error(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    with pytest.raises(ExecutionError) as caught:
        await run_to_completion(executor, request(["no-such-command-here"]), tmp_path)
    assert caught.value.code == "spawn_failed"
    assert list(tmp_path.iterdir()) == []


@as_root
async def test_job_never_runs_as_root(executor: ProcessExecutor, tmp_path: Path) -> None:
    result = await run(
        executor, request(["sh", "-c", "id -u; touch /root/x-$$ || echo denied"]), tmp_path
    )
    uid, verdict = result.stdout.decode().split()
    assert int(uid) >= 1_900_000_000
    assert verdict == "denied"


async def test_memory_limit_applies(executor: ProcessExecutor, tmp_path: Path) -> None:
    limits = SandboxLimits(wall_time_s=10, cpu_time_s=10, memory_mb=128)
    code = "x = bytearray(1 << 30)"
    result = await run(executor, request([sys_python(), "-c", code], limits), tmp_path)
    assert result.status == "killed"
    assert "memory limit 128 MiB" in result.reason


async def test_timeout_kills_the_whole_tree(executor: ProcessExecutor, tmp_path: Path) -> None:
    limits = SandboxLimits(wall_time_s=1, cpu_time_s=10, memory_mb=256)
    # A duration no other test uses, so that only this run's sleepers are counted.
    script = "sleep 97.31 & setsid sleep 97.31 & sleep 97.31"
    start = time.monotonic()
    result = await run(executor, request(["sh", "-c", script], limits), tmp_path)
    assert result.status == "timeout"
    assert time.monotonic() - start < 60  # ended by the 1 s limit, not by the sleepers
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "97.31"]
    ]
    if os.geteuid() == 0:
        assert leftovers == []


@as_root
async def test_fork_bomb_is_contained(executor: ProcessExecutor, tmp_path: Path) -> None:
    limits = SandboxLimits(wall_time_s=2, cpu_time_s=10, memory_mb=256, max_processes=16)
    code = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(500):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print(n, flush=True)\n"
    )
    result = await run(executor, request([sys_python(), "-c", code], limits), tmp_path)
    assert int(result.stdout) == 15


def sys_python() -> str:
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"


async def test_broken_bubblewrap_is_reported(tmp_path: Path) -> None:
    tools = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chmod(tools, 0o755)
        fake = tools / "bwrap"
        fake.write_text(
            "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n"
        )
        fake.chmod(0o755)
        executor = ProcessExecutor(sandbox=True, bwrap_path=str(fake))
        with pytest.raises(ExecutionError) as caught:
            await run_to_completion(executor, request(["true"]), tmp_path)
    finally:
        shutil.rmtree(tools)
    assert caught.value.code == "sandbox_failed"
    assert "No permissions to create new namespace" in caught.value.message
    assert list(tmp_path.iterdir()) == []
