"""Running jobs: the executor contract and the bubblewrap-sandboxed process executor."""

from computemesh.executor.base import (
    CollectedOutput,
    ExecutionHandle,
    ExecutionRequest,
    ExecutionResult,
    Executor,
    SandboxLimits,
    run_to_completion,
)
from computemesh.executor.process import ProcessExecutor
from computemesh.executor.sandbox import bubblewrap_available, find_bwrap

__all__ = [
    "CollectedOutput",
    "ExecutionHandle",
    "ExecutionRequest",
    "ExecutionResult",
    "Executor",
    "ProcessExecutor",
    "SandboxLimits",
    "bubblewrap_available",
    "find_bwrap",
    "run_to_completion",
]
