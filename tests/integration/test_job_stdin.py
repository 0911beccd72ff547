"""A job's standard input, from one of its inputs, on the real executors."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from computemesh.executor import (
    ExecutionRequest,
    ProcessExecutor,
    SandboxLimits,
    WasmExecutor,
    bubblewrap_available,
    run_to_completion,
)
from computemesh.executor.base import Executor
from computemesh.models.errors import ExecutionError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LIMITS = SandboxLimits(wall_time_s=20, cpu_time_s=20, memory_mb=256)
DATA = bytes(range(256)) * 40  # 10,240 bytes: more than one read of the echo below
ECHO_WAT = (Path(__file__).resolve().parents[2] / "examples" / "wasm" / "echo.wat").read_bytes()
CAT_PY = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"
needs_bwrap = pytest.mark.skipif(
    not bubblewrap_available(), reason="bubblewrap (bwrap) is not installed"
)


def job(
    command: list[str], inputs: list[tuple[str, bytes, bool]], stdin: str | None
) -> ExecutionRequest:
    return ExecutionRequest(
        job_id=f"stdin-{secrets.token_hex(4)}",
        command=command,
        env={},
        inputs=inputs,
        outputs=[],
        limits=LIMITS,
        stdin=stdin,
    )


def wasm_echo(stdin: str | None = "data/in.bin") -> ExecutionRequest:
    return job(["echo.wat"], [("echo.wat", ECHO_WAT, False), ("data/in.bin", DATA, False)], stdin)


def python_cat(stdin: str | None = "data/in.bin") -> ExecutionRequest:
    return job(["python3", "-c", CAT_PY], [("data/in.bin", DATA, False)], stdin)


async def test_wasm_guest_reads_the_named_input_as_stdin(tmp_path: Path) -> None:
    result = await run_to_completion(WasmExecutor(), wasm_echo(), tmp_path / "work")
    assert (result.status, result.exit_code) == ("completed", 0)
    assert result.stdout == DATA


async def test_wasm_guest_without_stdin_reads_nothing(tmp_path: Path) -> None:
    result = await run_to_completion(WasmExecutor(), wasm_echo(None), tmp_path / "work")
    assert (result.status, result.stdout) == ("completed", b"")


@needs_bwrap
async def test_sandboxed_process_reads_the_named_input_as_stdin(tmp_path: Path) -> None:
    executor = ProcessExecutor(sandbox=True)
    result = await run_to_completion(executor, python_cat(), tmp_path / "work")
    assert (result.status, result.exit_code) == ("completed", 0), result.stderr
    assert result.stdout == DATA
    empty = await run_to_completion(executor, python_cat(None), tmp_path / "work")
    assert (empty.status, empty.stdout) == ("completed", b"")


async def test_unsandboxed_process_reads_the_named_input_as_stdin(tmp_path: Path) -> None:
    executor = ProcessExecutor(sandbox=False)
    result = await run_to_completion(executor, python_cat(), tmp_path / "work")
    assert (result.status, result.stdout) == ("completed", DATA)


@pytest.mark.parametrize("stdin", ["missing.bin", "../in.bin", "/etc/passwd"])
@pytest.mark.parametrize("make", [wasm_echo, python_cat])
async def test_stdin_that_is_not_an_input_is_refused_before_running(
    make: object, stdin: str, tmp_path: Path
) -> None:
    executor: Executor = WasmExecutor() if make is wasm_echo else ProcessExecutor(sandbox=False)
    request = make(stdin)  # type: ignore[operator]
    with pytest.raises(ExecutionError) as caught:
        await executor.prepare(request, tmp_path / "work")
    assert caught.value.code == "invalid_stdin"
    assert not (tmp_path / "work").exists() or list((tmp_path / "work").iterdir()) == []
