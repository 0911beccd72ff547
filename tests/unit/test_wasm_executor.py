"""The wasm executor on the real wasmtime: WASI I/O, determinism, limits, refusals, cache."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import pytest

from computemesh.executor import (
    ExecutionRequest,
    ExecutionResult,
    ModuleCache,
    SandboxLimits,
    WasmExecutor,
    run_to_completion,
)
from computemesh.models.errors import ExecutionError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CHECKSUM = (EXAMPLES / "wasm" / "checksum.wat").read_bytes()
PRIMES = (EXAMPLES / "wasm" / "primes.wat").read_bytes()
TEXT = (EXAMPLES / "data" / "text.txt").read_bytes()
LIMITS = SandboxLimits(wall_time_s=10, cpu_time_s=10, memory_mb=16)

LOOP = b'(module (func (export "_start") (loop $l (br $l))))'
GROW = b"""(module (memory (export "memory") 1)
  (func (export "_start")
    (loop $more
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
      (br $more))))"""
WASI_WRITE = (
    '(import "wasi_snapshot_preview1" "fd_write"'
    " (func $write (param i32 i32 i32 i32) (result i32)))"
)
FLOOD = f"""(module {WASI_WRITE} (memory (export "memory") 2)
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 0) (i32.const 65536)) (i32.store (i32.const 4) (i32.const 65536))
    (loop $again
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 4))))))""".encode()
ENVIRON = b"""(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (drop (call $get (i32.const 1024) (i32.const 4096)))
    (i32.store (i32.const 8) (i32.const 4096)) (i32.store (i32.const 12) (i32.load (i32.const 4)))
    (drop (call $write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 16)))))"""
SLEEP = b"""(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i64.store (i32.const 24) (i64.const 30000000000))
    (call $exit (call $poll (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 200)))))"""


def request(
    module: bytes,
    *args: str,
    name: str = "main.wat",
    inputs: list[tuple[str, bytes, bool]] | None = None,
    outputs: list[str] | None = None,
    env: dict[str, str] | None = None,
    limits: SandboxLimits = LIMITS,
    fuel: int | None = None,
) -> ExecutionRequest:
    return ExecutionRequest(
        job_id=f"wasm-{secrets.token_hex(4)}",
        command=[name, *args],
        env=env or {},
        inputs=[(name, module, False), *(inputs or [])],
        outputs=outputs or [],
        limits=limits,
        fuel=fuel,
    )


async def run(executor: WasmExecutor, job: ExecutionRequest, tmp_path: Path) -> ExecutionResult:
    return await run_to_completion(executor, job, tmp_path / "work")


def checksum_job(*args: str) -> ExecutionRequest:
    return request(CHECKSUM, *args, inputs=[("text.txt", TEXT, False)], outputs=["sum.txt"])


async def test_reads_an_input_writes_an_output_and_stdout(tmp_path: Path) -> None:
    result = await run(WasmExecutor(), checksum_job("text.txt", "sum.txt"), tmp_path)
    assert (result.status, result.exit_code) == ("completed", 0)
    assert result.stdout == b"text.txt: 418 bytes, fnv1a32 26401816\n"
    (output,) = result.outputs
    assert output.data == result.stdout
    assert output.sha256 == hashlib.sha256(result.stdout).hexdigest()
    assert result.usage.fuel is not None and result.usage.fuel > 0
    assert list((tmp_path / "work").iterdir()) == []


async def test_same_module_and_inputs_give_same_output_and_fuel(tmp_path: Path) -> None:
    executor = WasmExecutor()
    job = request(PRIMES, "200000", outputs=["primes.txt"])
    first, second = [await run(executor, job, tmp_path) for _ in range(2)]
    assert first.stdout == second.stdout == b"primes below 200000: 17984\n"
    assert first.outputs[0].sha256 == second.outputs[0].sha256
    assert first.usage.fuel == second.usage.fuel
    assert first.usage.fuel is not None and first.usage.fuel > 1_000_000


async def test_module_cache_hit_on_second_run(tmp_path: Path) -> None:
    cache = ModuleCache(tmp_path / "cache")
    executor = WasmExecutor(cache=cache)
    await run(executor, checksum_job("text.txt", "sum.txt"), tmp_path)
    await run(executor, checksum_job("text.txt", "sum.txt"), tmp_path)
    assert (cache.stats.compiles, cache.stats.memory_hits) == (1, 1)
    restarted = WasmExecutor(cache_dir=tmp_path / "cache")
    await run(restarted, checksum_job("text.txt", "sum.txt"), tmp_path)
    assert (restarted.cache.stats.compiles, restarted.cache.stats.disk_hits) == (0, 1)


async def test_out_of_fuel_is_stopped_and_reported(tmp_path: Path) -> None:
    result = await run(WasmExecutor(), request(LOOP, fuel=10_000), tmp_path)
    assert result.status == "killed"
    assert result.reason.startswith("out of fuel")
    assert (result.exit_code, result.usage.fuel) == (None, 10_000)


async def test_default_fuel_follows_the_cpu_time_limit(tmp_path: Path) -> None:
    tiny = SandboxLimits(wall_time_s=10, cpu_time_s=1e-6, memory_mb=16)
    result = await run(WasmExecutor(), request(LOOP, limits=tiny), tmp_path)
    assert result.status == "killed" and result.reason.startswith("out of fuel")
    assert result.usage.fuel == 5_000


async def test_memory_growth_past_the_limit_is_killed_with_reason(tmp_path: Path) -> None:
    result = await run(WasmExecutor(), request(GROW), tmp_path)
    assert result.status == "killed"
    assert "memory limit 16 MiB exceeded" in result.reason
    assert result.usage.max_rss_kb <= 16 * 1024


async def test_guest_saying_out_of_memory_is_killed_with_reason(tmp_path: Path) -> None:
    result = await run(WasmExecutor(), request(PRIMES, "100000000"), tmp_path)
    assert result.status == "killed"
    assert "memory limit 16 MiB exceeded" in result.reason
    assert result.stderr == b"primes: out of memory\n"


async def test_initial_memory_over_the_limit_does_not_start(tmp_path: Path) -> None:
    big = b'(module (memory 1024) (func (export "_start")))'
    result = await run(WasmExecutor(), request(big), tmp_path)
    assert result.status == "killed" and "initial memory" in result.reason


@pytest.mark.parametrize("path", ["/etc/passwd", "../../../../../../etc/passwd", "../stdout"])
async def test_host_files_outside_the_work_dir_cannot_be_read(path: str, tmp_path: Path) -> None:
    result = await run(WasmExecutor(), checksum_job(path, "sum.txt"), tmp_path)
    assert (result.status, result.exit_code) == ("failed", 1)
    assert result.stderr == f"checksum: cannot open {path}\n".encode()
    assert result.stdout == b""


async def test_output_files_cannot_be_written_outside_the_work_dir(tmp_path: Path) -> None:
    result = await run(WasmExecutor(), checksum_job("text.txt", "../escaped.txt"), tmp_path)
    assert result.exit_code == 1
    assert not list(tmp_path.rglob("escaped.txt"))


async def test_argv_is_the_command_and_env_the_request(tmp_path: Path) -> None:
    usage = await run(WasmExecutor(), checksum_job("only-one-argument"), tmp_path)
    assert (usage.exit_code, usage.stderr) == (2, b"usage: checksum.wat INPUT OUTPUT\n")
    env = await run(WasmExecutor(), request(ENVIRON, env={"GREETING": "hi"}), tmp_path)
    assert env.stdout == b"GREETING=hi\x00"


async def test_stdout_is_capped_at_max_output_bytes(tmp_path: Path) -> None:
    capped = SandboxLimits(wall_time_s=10, cpu_time_s=10, memory_mb=16, max_output_bytes=1000)
    result = await run(WasmExecutor(), request(FLOOD, limits=capped), tmp_path)
    assert result.status == "completed"
    assert (len(result.stdout), result.stdout_truncated) == (1000, True)


async def test_sleeping_is_refused_rather_than_blocking(tmp_path: Path) -> None:
    result = await run(WasmExecutor(), request(SLEEP), tmp_path)
    assert result.exit_code == 58  # ENOTSUP from poll_oneoff
    assert result.usage.wall_s < 5


@pytest.mark.parametrize(
    "module",
    [b"this is not a module", b"\x00asm\x01\x00\x00\x00\x01garbage", b"(module (func $f))"],
)
async def test_invalid_module_is_refused_before_running(module: bytes, tmp_path: Path) -> None:
    with pytest.raises(ExecutionError) as caught:
        await run(WasmExecutor(), request(module), tmp_path)
    assert caught.value.code == "invalid_module"
    assert list((tmp_path / "work").iterdir()) == []


async def test_module_must_be_one_of_the_inputs(tmp_path: Path) -> None:
    job = ExecutionRequest(
        job_id="j", command=["absent.wasm"], env={}, inputs=[], outputs=[], limits=LIMITS
    )
    with pytest.raises(ExecutionError) as caught:
        await run(WasmExecutor(), job, tmp_path)
    assert caught.value.code == "invalid_command"
    with pytest.raises(ExecutionError) as escaping:
        await run(WasmExecutor(), request(LOOP, name="../main.wat"), tmp_path)
    assert escaping.value.code == "invalid_path"
