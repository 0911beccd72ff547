"""One guest run: a job's module instantiated under its limits and its ``_start`` called.

``GuestRun.run`` blocks (call it from a worker thread); ``GuestRun.interrupt`` may be
called from any thread and makes the running code trap at its next function entry or
loop back-edge. The guest sees only what WASI gives it here:

* argv and the environment of the request, nothing inherited from the node;
* stdin, stdout and stderr as files the executor chose (outside the work dir);
* the job's work dir, preopened twice: as ``/work`` (descriptor 3) and as ``.``
  (descriptor 4, so that relative paths work under wasi-libc); for a job that
  checkpoints, its checkpoint directory as ``/checkpoint`` (descriptor 5); nothing else;
* clocks and random numbers as WASI provides them, but no sleeping: ``poll_oneoff``
  answers ENOTSUP, because a guest blocked in the host cannot be interrupted.

Limits: a fuel budget (``fuel_budget``), a cap on linear memory (``memory.grow`` returns
-1 past it, and a module whose initial memory is larger does not instantiate), one
memory, and bounded tables. Fuel used is exact when the guest returns, exits or runs
out of fuel. After a trap or an interruption it is not known and is reported as None:
wasmtime keeps the fuel counter in a register and does not write it back when a trap
(an out-of-bounds access, a division by zero, an epoch interruption) unwinds.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wasmtime import (
    Engine,
    ExitTrap,
    Func,
    FuncType,
    Instance,
    Linker,
    Memory,
    Module,
    Store,
    Trap,
    TrapCode,
    ValType,
    WasiConfig,
    WasmtimeError,
)

from computemesh.executor.base import SandboxLimits
from computemesh.executor.checkpoint import SANDBOX_CHECKPOINT_DIR
from computemesh.executor.wasm_module import ENTRY_POINT, WASI_MODULE, first_line
from computemesh.models.job import FUEL_PER_CPU_SECOND

WORK_DIR_GUEST_PATH = "/work"
MAX_TABLE_ELEMENTS = 1_000_000
MAX_TABLES = 8
ERRNO_NOTSUP = 58
MIB = 1024 * 1024

GuestEnd = Literal["returned", "exited", "out_of_fuel", "interrupted", "trapped", "not_started"]
EXACT_FUEL_ENDS: frozenset[GuestEnd] = frozenset({"returned", "exited", "out_of_fuel"})


def fuel_budget(limits: SandboxLimits, requested: int | None = None) -> int:
    """``requested`` when given, else ``FUEL_PER_CPU_SECOND`` per second of CPU-time limit."""
    if requested is not None:
        if requested < 1:
            raise ValueError("a fuel budget must be at least 1")
        return requested
    return math.ceil(limits.cpu_time_s * FUEL_PER_CPU_SECOND)


@dataclass(frozen=True)
class GuestSetup:
    """Everything one run needs; ``module`` must have been compiled for ``engine``."""

    engine: Engine
    module: Module
    argv: list[str]
    env: dict[str, str]
    work_dir: Path
    stdin: Path
    stdout: Path
    stderr: Path
    fuel: int
    memory_bytes: int
    checkpoint_dir: Path | None = None


@dataclass(frozen=True)
class GuestExit:
    """How the guest ended.

    ``end`` is "returned" (``_start`` returned: exit code 0), "exited" (``proc_exit``),
    "out_of_fuel", "interrupted", "trapped" (any other trap or host error after
    instantiation) or "not_started" (instantiation failed, or interrupted before).
    ``message`` says what went wrong in a few words ("" when it returned or exited).
    ``memory_bytes`` is the size of its linear memory at the end (0 when it has none);
    ``fuel_used`` is None when it is not known exactly (see the module docstring).
    """

    end: GuestEnd
    exit_code: int | None
    message: str
    fuel_used: int | None
    memory_bytes: int
    cpu_s: float
    wall_s: float


class GuestRun:
    """One run of ``setup``; ``run`` at most once, ``interrupt`` any time from anywhere."""

    def __init__(self, setup: GuestSetup) -> None:
        self.setup = setup
        self._interrupted = threading.Event()

    def interrupt(self) -> None:
        """Make the guest trap soon; before ``run`` starts, make it not start at all."""
        self._interrupted.set()
        self.setup.engine.increment_epoch()

    def run(self) -> GuestExit:
        """Instantiate and call ``_start``; never raises for anything the guest does."""
        started, cpu_started = time.monotonic(), time.thread_time()
        store = self._store()
        try:
            end, code, message, instance = self._call(store)
            metered = end in EXACT_FUEL_ENDS
            fuel_used = self.setup.fuel - store.get_fuel() if metered else None
            memory = _memory_size(store, instance)
        finally:
            store.close()
        return GuestExit(
            end=end,
            exit_code=code,
            message=message,
            fuel_used=fuel_used,
            memory_bytes=memory,
            cpu_s=time.thread_time() - cpu_started,
            wall_s=time.monotonic() - started,
        )

    def _store(self) -> Store:
        setup = self.setup
        store = Store(setup.engine)
        store.set_fuel(setup.fuel)
        store.set_epoch_deadline(1)
        store.set_limits(
            memory_size=setup.memory_bytes,
            table_elements=MAX_TABLE_ELEMENTS,
            instances=1,
            tables=MAX_TABLES,
            memories=1,
        )
        store.set_wasi(self._wasi())
        return store

    def _wasi(self) -> WasiConfig:
        setup = self.setup
        wasi = WasiConfig()
        wasi.argv = setup.argv
        wasi.env = list(setup.env.items())
        wasi.stdin_file = str(setup.stdin)
        wasi.stdout_file = str(setup.stdout)
        wasi.stderr_file = str(setup.stderr)
        wasi.preopen_dir(str(setup.work_dir), WORK_DIR_GUEST_PATH)
        wasi.preopen_dir(str(setup.work_dir), ".")
        if setup.checkpoint_dir is not None:
            wasi.preopen_dir(str(setup.checkpoint_dir), SANDBOX_CHECKPOINT_DIR)
        return wasi

    def _linker(self) -> Linker:
        linker = Linker(self.setup.engine)
        linker.define_wasi()
        linker.allow_shadowing = True
        no_sleep = FuncType([ValType.i32()] * 4, [ValType.i32()])
        linker.define_func(WASI_MODULE, "poll_oneoff", no_sleep, _refuse_poll)
        return linker

    def _call(self, store: Store) -> tuple[GuestEnd, int | None, str, Instance | None]:
        """``(end, exit code, message, instance)``; the epoch deadline is set before the
        interrupt flag is read, so an ``interrupt`` racing with the start is never lost."""
        if self._interrupted.is_set():
            return "not_started", None, "interrupted before it started", None
        instance: Instance | None = None
        try:
            instance = self._linker().instantiate(store, self.setup.module)
            entry = instance.exports(store)[ENTRY_POINT]
            assert isinstance(entry, Func)
            entry(store)
        except ExitTrap as exc:
            return "exited", exc.code, "", instance
        except Trap as exc:
            end, message = _trap_end(exc)
            return end, None, message, instance
        except WasmtimeError as exc:
            failed: GuestEnd = "trapped" if instance is not None else "not_started"
            if self._interrupted.is_set():
                failed = "interrupted"
            return failed, None, first_line(exc), instance
        return "returned", 0, "", instance


def _trap_end(trap: Trap) -> tuple[GuestEnd, str]:
    code = trap.trap_code
    if code is TrapCode.OUT_OF_FUEL:
        return "out_of_fuel", "out of fuel"
    if code is TrapCode.INTERRUPT:
        return "interrupted", "interrupted"
    if code is None:
        return "trapped", f"trap: {first_line(trap)}"
    return "trapped", f"trap: {code.name.lower().replace('_', ' ')}"


def _memory_size(store: Store, instance: Instance | None) -> int:
    if instance is None:
        return 0
    memory = instance.exports(store).get("memory")
    return memory.data_len(store) if isinstance(memory, Memory) else 0


def _refuse_poll(*_: int) -> int:
    """WASI ``poll_oneoff``: refused, so that no guest sleeps where it cannot be stopped."""
    return ERRNO_NOTSUP
