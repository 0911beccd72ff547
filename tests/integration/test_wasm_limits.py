"""The wasm executor's time and disk limits and stop, on the real wasmtime.

Slower than the unit tests: each waits for a limit to pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from pathlib import Path

import pytest

from computemesh.executor import (
    ExecutionRequest,
    SandboxLimits,
    WasmExecutor,
    run_to_completion,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

LOOP = b'(module (func (export "_start") (loop $l (br $l))))'
WRITER = b"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $spin i32)
    (i32.store (i32.const 0) (i32.const 65536)) (i32.store (i32.const 4) (i32.const 65536))
    (loop $again
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $spin (i32.const 0))
      (loop $slow
        (local.set $spin (i32.add (local.get $spin) (i32.const 1)))
        (br_if $slow (i32.lt_u (local.get $spin) (i32.const 1000000))))
      (br $again))))"""
HUGE_FUEL = 10**15


def request(module: bytes, limits: SandboxLimits) -> ExecutionRequest:
    return ExecutionRequest(
        job_id=f"wasm-{secrets.token_hex(4)}",
        command=["main.wat"],
        env={},
        inputs=[("main.wat", module, False)],
        outputs=[],
        limits=limits,
        fuel=HUGE_FUEL,
    )


async def test_infinite_loop_is_stopped_by_the_wall_time_limit(tmp_path: Path) -> None:
    limits = SandboxLimits(wall_time_s=0.5, cpu_time_s=60, memory_mb=16)
    started = time.monotonic()
    result = await run_to_completion(WasmExecutor(), request(LOOP, limits), tmp_path)
    elapsed = time.monotonic() - started
    assert result.status == "timeout"
    assert result.reason == "exceeded wall time limit of 0.5 s"
    assert 0.5 <= elapsed < 10  # interrupted, not left to loop
    assert result.usage.fuel is None  # not known exactly after an interruption


async def test_stop_interrupts_a_run_and_the_event_loop_keeps_serving(tmp_path: Path) -> None:
    executor = WasmExecutor()
    limits = SandboxLimits(wall_time_s=60, cpu_time_s=60, memory_mb=16)
    handle = await executor.prepare(request(LOOP, limits), tmp_path)
    await executor.start(handle)
    ticks = 0
    for _ in range(10):
        await asyncio.sleep(0.02)
        ticks += 1
    stopped_at = time.monotonic()
    await executor.stop(handle)
    result = await executor.wait(handle)
    await executor.cleanup(handle)
    assert ticks == 10
    assert time.monotonic() - stopped_at < 10  # interrupted, not left to loop
    assert (result.status, result.reason) == ("killed", "stopped before it finished")
    assert not handle.job_dir.exists()


async def test_cancelled_run_is_stopped_and_cleaned_up(tmp_path: Path) -> None:
    limits = SandboxLimits(wall_time_s=60, cpu_time_s=60, memory_mb=16)
    task = asyncio.create_task(run_to_completion(WasmExecutor(), request(LOOP, limits), tmp_path))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(tmp_path.iterdir()) == []


async def test_writing_past_the_file_size_limit_is_killed(tmp_path: Path) -> None:
    limits = SandboxLimits(wall_time_s=20, cpu_time_s=60, memory_mb=16, max_file_mb=2)
    result = await run_to_completion(WasmExecutor(), request(WRITER, limits), tmp_path)
    assert result.status == "killed"
    assert "file size limit of 2 MiB" in result.reason
    assert result.usage.wall_s < 15  # before the 20 s wall limit


async def test_runs_in_parallel_do_not_interrupt_each_other(tmp_path: Path) -> None:
    executor = WasmExecutor()
    short = SandboxLimits(wall_time_s=0.3, cpu_time_s=60, memory_mb=16)
    long = SandboxLimits(wall_time_s=1.0, cpu_time_s=60, memory_mb=16)
    first, second = await asyncio.gather(
        run_to_completion(executor, request(LOOP, short), tmp_path),
        run_to_completion(executor, request(LOOP, long), tmp_path),
    )
    assert (first.status, second.status) == ("timeout", "timeout")
    # Neither run's limit cuts the other short, nor holds it until its own.
    assert first.usage.wall_s < second.usage.wall_s
    assert second.usage.wall_s >= 0.95


GROW = b"""(module (memory (export "memory") 1)
  (func (export "_start")
    (loop $more
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
      (br $more))))"""
HELLO = b"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "fine\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 5))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""


async def assert_still_works(executor: WasmExecutor, tmp_path: Path) -> None:
    limits = SandboxLimits(wall_time_s=5, cpu_time_s=5, memory_mb=16)
    result = await run_to_completion(executor, request(HELLO, limits), tmp_path)
    assert result.status == "completed", result.reason
    assert result.stdout == b"fine\n"


async def test_out_of_fuel_ends_the_job_and_the_executor_keeps_serving(tmp_path: Path) -> None:
    executor = WasmExecutor()
    limits = SandboxLimits(wall_time_s=30, cpu_time_s=60, memory_mb=16)
    starving = dataclasses.replace(request(LOOP, limits), fuel=100_000)
    result = await run_to_completion(executor, starving, tmp_path)
    assert result.status == "killed" and result.reason.startswith("out of fuel")
    assert result.usage.fuel == 100_000
    await assert_still_works(executor, tmp_path)


async def test_memory_growth_past_the_limit_ends_the_job_and_the_executor_keeps_serving(
    tmp_path: Path,
) -> None:
    executor = WasmExecutor()
    limits = SandboxLimits(wall_time_s=30, cpu_time_s=60, memory_mb=16)
    result = await run_to_completion(executor, request(GROW, limits), tmp_path)
    assert result.status == "killed"
    assert result.usage.max_rss_kb <= 16 * 1024
    await assert_still_works(executor, tmp_path)
