"""What a wasm job's module must be, and the one engine configuration it is compiled for.

Every module is compiled for ``new_engine()``'s configuration, so compiled artifacts are
interchangeable between the engines it returns (each run gets its own engine; see
``wasm.py``). That configuration:

* fuel metering on: every run has a fuel budget, and fuel used is exact and the same on
  every host (the natural unit to bill and to compare replicas);
* epoch interruption on: the wall-time limit and ``stop`` interrupt running code;
* NaN canonicalisation on, threads off: floating point results and memory are the same
  on every host, so replicas can be compared byte for byte.

A job's module is a WebAssembly binary, or WAT text that is converted first. It may
import only WASI preview 1 (``wasi_snapshot_preview1``) and must export ``_start``.
"""

from __future__ import annotations

import importlib.metadata

from wasmtime import Config, Engine, FuncType, Module, WasmtimeError, wat2wasm

from computemesh.models.errors import ExecutionError

WASI_MODULE = "wasi_snapshot_preview1"
ENTRY_POINT = "_start"
WASM_MAGIC = b"\x00asm"
CONFIG_TAG = "fuel-epoch-nancanon-nothreads-1"
"""Names the engine configuration; change it whenever ``new_engine`` changes."""


def new_engine() -> Engine:
    """A fresh engine with the configuration described in the module docstring."""
    config = Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    config.cranelift_nan_canonicalization = True
    config.wasm_threads = False
    return Engine(config)


def artifact_tag() -> str:
    """Compiled artifacts are valid only for this wasmtime version and configuration."""
    return f"wasmtime-{importlib.metadata.version('wasmtime')}-{CONFIG_TAG}"


def to_binary(source: bytes) -> bytes:
    """The WebAssembly binary for ``source`` (a binary already, or WAT text).

    Raises ExecutionError (code "invalid_module") when it is neither.
    """
    if source.startswith(WASM_MAGIC):
        return source
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("it is neither a WebAssembly binary nor WAT text") from None
    try:
        return bytes(wat2wasm(text))
    except WasmtimeError as exc:
        raise _invalid(f"the WAT text does not parse: {first_line(exc)}") from exc


def compile_module(engine: Engine, source: bytes) -> Module:
    """Compile ``source`` (binary or WAT) for ``engine``; ExecutionError if it is not valid."""
    binary = to_binary(source)
    try:
        return Module(engine, binary)
    except WasmtimeError as exc:
        raise _invalid(f"it is not a valid WebAssembly module: {first_line(exc)}") from exc


def check_module_shape(module: Module) -> None:
    """Refuse a module that imports anything but WASI or does not export ``_start``.

    Raises ExecutionError (code "invalid_module") naming the offending import or export.
    """
    for item in module.imports:
        if item.module != WASI_MODULE:
            raise _invalid(f"it imports {item.module}::{item.name}; only {WASI_MODULE} is provided")
        if not isinstance(item.type, FuncType):
            raise _invalid(f"it imports {item.module}::{item.name}, which is not a function")
    entry = [item for item in module.exports if item.name == ENTRY_POINT]
    if not entry or not isinstance(entry[0].type, FuncType):
        raise _invalid(f"it exports no {ENTRY_POINT} function")
    entry_type = entry[0].type
    if entry_type.params or entry_type.results:
        raise _invalid(f"its {ENTRY_POINT} function takes or returns values")


def first_line(error: Exception) -> str:
    """The most telling line of a wasmtime error: its cause when it has one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "Caused by:" in lines:
        return lines[-1]
    return lines[0] if lines else type(error).__name__


def _invalid(why: str) -> ExecutionError:
    return ExecutionError(
        f"the job's module is refused: {why}",
        code="invalid_module",
        hint="give command[0] as a WASI command module (.wasm or .wat) that exports _start",
    )
