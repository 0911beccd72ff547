"""What a wasm job's module must be: WASM or WAT, WASI imports only, a _start export."""

from __future__ import annotations

import pytest

from computemesh.executor.wasm_module import (
    check_module_shape,
    compile_module,
    new_engine,
    to_binary,
)
from computemesh.models.errors import ExecutionError

START = '(module (func (export "_start")))'


def refusal(source: bytes) -> str:
    engine = new_engine()
    with pytest.raises(ExecutionError) as caught:
        check_module_shape(compile_module(engine, source))
    assert caught.value.code == "invalid_module"
    return caught.value.message


def test_wat_and_binary_compile_to_the_same_module() -> None:
    binary = to_binary(START.encode())
    assert binary.startswith(b"\x00asm")
    assert to_binary(binary) == binary
    check_module_shape(compile_module(new_engine(), binary))


def test_text_that_is_not_wat_is_refused() -> None:
    assert "WAT text does not parse" in refusal(b"print('hello')")


def test_bytes_that_are_not_a_module_are_refused() -> None:
    assert "neither a WebAssembly binary nor WAT" in refusal(b"\xff\xfe\x00garbage")
    assert "not a valid WebAssembly module" in refusal(b"\x00asm\x01\x00\x00\x00garbage")


def test_imports_other_than_wasi_are_refused() -> None:
    source = b'(module (import "env" "open" (func)) (func (export "_start")))'
    assert "imports env::open" in refusal(source)


def test_a_module_without_start_is_refused() -> None:
    assert "exports no _start" in refusal(b'(module (func (export "main")))')
    assert "takes or returns" in refusal(b'(module (func (export "_start") (param i32)))')
