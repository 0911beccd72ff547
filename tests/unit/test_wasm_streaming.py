"""Live output of wasm jobs: stdout and stderr reach ``on_output`` while the guest runs."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from computemesh.executor import ExecutionRequest, SandboxLimits, WasmExecutor
from computemesh.executor.base import ExecutionHandle, OutputStream, run_to_completion

WAIT_S = 60.0
LONG = SandboxLimits(wall_time_s=300, cpu_time_s=300, memory_mb=16)
WRITE = (
    '(import "wasi_snapshot_preview1" "fd_write"'
    " (func $write (param i32 i32 i32 i32) (result i32)))"
)
PRINT_THEN_SPIN = f"""(module {WRITE} (memory (export "memory") 1)
  (data (i32.const 64) "started\\n") (data (i32.const 80) "warming up\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 8))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32)))
    (i32.store (i32.const 8) (i32.const 80)) (i32.store (i32.const 12) (i32.const 11))
    (drop (call $write (i32.const 2) (i32.const 8) (i32.const 1) (i32.const 32)))
    (loop $spin (br $spin))))""".encode()
LINES = f"""(module {WRITE} (memory (export "memory") 1)
  (data (i32.const 64) "line\\n")
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 5))
    (loop $again
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 20000))))))""".encode()


def request(module: bytes, limits: SandboxLimits = LONG) -> ExecutionRequest:
    return ExecutionRequest(
        job_id=f"live-{secrets.token_hex(4)}",
        command=["main.wat"],
        env={},
        inputs=[("main.wat", module, False)],
        outputs=[],
        limits=limits,
    )


class Recorder:
    """Every chunk in order; ``seen`` is set once both streams have said what ``wanted``."""

    def __init__(self, wanted: dict[OutputStream, bytes] | None = None) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.wanted = wanted or {}
        self.seen = asyncio.Event()

    def output(self, stream: OutputStream, chunk: bytes) -> None:
        self.events.append((stream, chunk))
        if all(self.joined(name) == text for name, text in self.wanted.items()):
            self.seen.set()

    def joined(self, stream: str) -> bytes:
        return b"".join(chunk for name, chunk in self.events if name == stream)

    async def running(self, handle: ExecutionHandle) -> None:
        return None

    async def ended(self, handle: ExecutionHandle) -> None:
        self.events.append(("ended", b""))


async def test_output_arrives_while_the_guest_still_runs(tmp_path: Path) -> None:
    executor = WasmExecutor()
    recorder = Recorder({"stdout": b"started\n", "stderr": b"warming up\n"})
    handle = await executor.prepare(request(PRINT_THEN_SPIN), tmp_path / "work")
    handle.on_output = recorder.output
    try:
        await executor.start(handle)
        # The guest spins until stopped, so whatever arrived before the stop was streamed live.
        await asyncio.wait_for(recorder.seen.wait(), WAIT_S)
        recorder.events.append(("stopping", b""))
        await executor.stop(handle)
        result = await executor.wait(handle)
    finally:
        await executor.cleanup(handle)
    assert result.status == "killed" and result.stdout == b"started\n"
    assert recorder.events[-1] == ("stopping", b"")
    assert recorder.joined("stdout") == b"started\n"
    assert recorder.joined("stderr") == b"warming up\n"


async def test_every_byte_is_streamed_once_before_the_run_ends(tmp_path: Path) -> None:
    recorder = Recorder()
    result = await run_to_completion(
        WasmExecutor(), request(LINES), tmp_path / "work", observers=[recorder]
    )
    assert result.status == "completed"
    assert recorder.events[-1] == ("ended", b"")
    assert recorder.joined("stdout") == b"line\n" * 20000
    assert result.stdout == (b"line\n" * 20000)[: LONG.max_output_bytes]
    assert recorder.joined("stderr") == b""


async def test_without_a_listener_nothing_is_followed(tmp_path: Path) -> None:
    executor = WasmExecutor()
    handle = await executor.prepare(request(LINES), tmp_path / "work")
    try:
        await executor.start(handle)
        result = await executor.wait(handle)
    finally:
        await executor.cleanup(handle)
    assert result.status == "completed" and result.stdout_truncated
