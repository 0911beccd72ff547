"""Running jobs: the executor contract, the process executor (bubblewrap) and wasm (wasmtime)."""

from computemesh.executor.base import (
    CollectedOutput,
    ExecutionHandle,
    ExecutionRequest,
    ExecutionResult,
    Executor,
    SandboxLimits,
    run_to_completion,
)
from computemesh.executor.model_cache import ModelCache
from computemesh.executor.onnx import OnnxExecutor
from computemesh.executor.process import ProcessExecutor
from computemesh.executor.python_runtime import PythonRuntime
from computemesh.executor.sandbox import ReadOnlyBind, bubblewrap_available, find_bwrap
from computemesh.executor.wasm import WasmExecutor
from computemesh.executor.wasm_cache import ModuleCache

__all__ = [
    "CollectedOutput",
    "ExecutionHandle",
    "ExecutionRequest",
    "ExecutionResult",
    "Executor",
    "ModelCache",
    "ModuleCache",
    "OnnxExecutor",
    "ProcessExecutor",
    "PythonRuntime",
    "ReadOnlyBind",
    "SandboxLimits",
    "WasmExecutor",
    "bubblewrap_available",
    "find_bwrap",
    "run_to_completion",
]
