"""The "onnx" executor: ONNX models run with onnxruntime inside the bubblewrap sandbox.

It wraps a ``ProcessExecutor`` whose sandbox also shows a Python runtime read-only
(``python_runtime``: an interpreter plus numpy, onnxruntime, onnx and what they
require, nothing else of the node's environment). The job's command names the model
and its tensor files (grammar in ``onnx_call``); what runs in the sandbox is the runner
(``onnx_runner.py``, copied into the work directory) under ``python3.X -I``.

``prepare`` refuses a job, raising ExecutionError, before its run starts when:

* the command is malformed, or names a model or tensor file the job does not carry
  ("invalid_command");
* the model is not valid ONNX ("invalid_model"). Models are checked **inside the
  sandbox**, in a run of their own (``onnx_runner.py inspect``: ``onnx.checker``, then
  loading the model in onnxruntime) under the job's limits (wall and CPU time capped
  at ``INSPECT_MAX_S``). Parsing a stranger's protobuf and building a graph from it is
  the riskiest step of all, so it gets the same isolation as running it. The check
  also yields the model's signature; a model that passes is cached by sha256
  (``model_cache``), so a model seen before is not checked again;
* a tensor file cannot be read, is larger than its own header declares, or does not
  fit the input it feeds, larger than declared included ("invalid_input"). These
  checks read only ``.npy`` headers and JSON, on the node, against the signature.

The runner gets ``ORT_DISABLE_TELEMETRY=1`` (onnxruntime otherwise writes a device id
and an event store under ``$HOME``) and one thread for onnxruntime, OpenMP and OpenBLAS
by default: inference is reproducible across replicas on one kind of CPU and stays far
below the job's process limit. The model check is not billed; the run is the job's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from computemesh.executor.base import (
    ExecutionHandle,
    ExecutionRequest,
    ExecutionResult,
    SandboxLimits,
    run_to_completion,
)
from computemesh.executor.model_cache import ModelCache
from computemesh.executor.onnx_call import (
    bind_feeds,
    check_feeds,
    model_path,
    output_files,
)
from computemesh.executor.onnx_runner import EXIT_INVALID_MODEL
from computemesh.executor.onnx_signature import ModelSignature
from computemesh.executor.process import ProcessExecutor
from computemesh.executor.python_runtime import PythonRuntime, resolve_python_runtime
from computemesh.models.errors import ExecutionError
from computemesh.models.market import ResourceUsage

log = logging.getLogger(__name__)

ONNX_PACKAGES = ("numpy", "onnxruntime", "onnx")
"""What the runtime of an onnx executor holds (with their requirements)."""

RUNNER_FILE = ".cmesh-onnx-runner.py"
INSPECT_MODEL_FILE = "model.onnx"
INSPECT_MAX_S = 60.0
MAX_SHOWN_ERROR = 1000
INVALID_MODEL_HINT = "export the model again (onnx.checker.check_model must accept it)"


class OnnxExecutor:
    """Runs ``onnx`` jobs; see the module docstring.

    ``runtime`` must hold numpy and onnxruntime (``python_runtime_for_onnx``); ``cache``
    keeps checked models. ``threads`` is onnxruntime's intra-op thread count. Raises
    ExecutionError as ``ProcessExecutor`` does (no bubblewrap, a bad bind).
    """

    name: str = "onnx"

    def __init__(
        self,
        *,
        runtime: PythonRuntime,
        cache: ModelCache,
        sandbox: bool = True,
        bwrap_path: str | None = None,
        max_inline_output_bytes: int = 256 * 1024,
        threads: int = 1,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.runtime = runtime
        self.cache = cache
        self.threads = threads
        self.process = ProcessExecutor(
            sandbox=sandbox,
            bwrap_path=bwrap_path,
            max_inline_output_bytes=max_inline_output_bytes,
            ro_binds=runtime.binds() if sandbox else (),
        )
        self._import_paths = list(runtime.import_paths(sandboxed=sandbox))
        self._runner = runner_source()

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The runtime labels this executor offers jobs (see ``python_runtime``)."""
        return self.runtime.offers()

    async def prepare(self, request: ExecutionRequest, work_root: Path) -> ExecutionHandle:
        if request.stdin is not None:
            raise ExecutionError("the onnx executor gives jobs no stdin", code="invalid_stdin")
        files = _input_files(request)
        model = model_path(request.command)
        data = files.get(model)
        if data is None:
            raise ExecutionError(
                f"the model {model} is not among the job's inputs", code="invalid_command"
            )
        if RUNNER_FILE in files:
            raise ExecutionError(f"{RUNNER_FILE} is reserved", code="invalid_command")
        signature = await self.model_signature(data, request, work_root, name=model)
        feeds = bind_feeds(request.command, signature)
        check_feeds(feeds, signature, files)
        outputs = output_files(signature, [*files, RUNNER_FILE])
        if not outputs:
            raise ExecutionError("the model has no numeric tensor output", code="invalid_model")
        plan = {
            "path": self._import_paths,
            "model": model,
            "threads": self.threads,
            "inputs": feeds,
            "outputs": outputs,
        }
        run = dataclasses.replace(
            request,
            command=self._command("run", plan),
            env={**request.env, **self._runner_env()},
            inputs=[*request.inputs, (RUNNER_FILE, self._runner, False)],
            runtime=None,  # the runtime is bound for every onnx run (``ro_binds``)
        )
        return await self.process.prepare(run, work_root)

    async def start(self, handle: ExecutionHandle) -> None:
        await self.process.start(handle)

    async def wait(self, handle: ExecutionHandle) -> ExecutionResult:
        return await self.process.wait(handle)

    async def stop(self, handle: ExecutionHandle) -> None:
        await self.process.stop(handle)

    async def cleanup(self, handle: ExecutionHandle) -> None:
        await self.process.cleanup(handle)

    async def usage(self, handle: ExecutionHandle) -> ResourceUsage:
        return await self.process.usage(handle)

    async def checkpoint(self, handle: ExecutionHandle) -> bytes:
        return await self.process.checkpoint(handle)

    async def model_signature(
        self,
        model: bytes,
        request: ExecutionRequest,
        work_root: Path,
        *,
        name: str = INSPECT_MODEL_FILE,
    ) -> ModelSignature:
        """The model's signature: from the cache, else from a sandboxed check (then cached).

        The check runs under ``request``'s limits (see ``inspect_limits``) with the model
        at ``name`` in its work dir. Raises ExecutionError "invalid_model" when the check
        rejects the model, and "model_check_failed" when the check itself did not finish
        (a limit, a crash).
        """
        digest = hashlib.sha256(model).hexdigest()
        cached = self.cache.get(digest)
        if cached is not None:
            return cached
        check = ExecutionRequest(
            job_id=f"{request.job_id}-check",
            command=self._command("inspect", {"path": self._import_paths, "model": name}),
            env=self._runner_env(),
            inputs=[(RUNNER_FILE, self._runner, False), (name, model, False)],
            outputs=[],
            limits=inspect_limits(request.limits),
        )
        signature = signature_from(await run_to_completion(self.process, check, work_root))
        try:
            self.cache.put(digest, model, signature)
        except OSError as exc:
            log.warning("could not cache model %s: %s", digest, exc)
        return signature

    def _command(self, mode: str, plan: Mapping[str, Any]) -> list[str]:
        return [self.runtime.interpreter, "-I", RUNNER_FILE, mode, json.dumps(plan)]

    def _runner_env(self) -> dict[str, str]:
        threads = str(self.threads)
        return {
            "ORT_DISABLE_TELEMETRY": "1",
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
        }


def python_runtime_for_onnx(*, switch_uid: bool | None = None) -> PythonRuntime:
    """The node's Python runtime with ``ONNX_PACKAGES``; ExecutionError when it has none."""
    return resolve_python_runtime(ONNX_PACKAGES, switch_uid=switch_uid)


def runner_source() -> bytes:
    """The bytes of ``onnx_runner.py``, the program written into each job's work dir."""
    return importlib.resources.files("computemesh.executor").joinpath("onnx_runner.py").read_bytes()


def inspect_limits(limits: SandboxLimits) -> SandboxLimits:
    """The job's limits, wall and CPU time capped at ``INSPECT_MAX_S``."""
    return dataclasses.replace(
        limits,
        wall_time_s=min(limits.wall_time_s, INSPECT_MAX_S),
        cpu_time_s=min(limits.cpu_time_s, INSPECT_MAX_S),
    )


def signature_from(result: ExecutionResult) -> ModelSignature:
    """The signature a model check printed; ExecutionError when it rejected the model."""
    if result.status == "completed":
        try:
            return ModelSignature.from_json(result.stdout)
        except ValueError as exc:
            raise ExecutionError(
                f"the model check printed no usable signature: {exc}", code="model_check_failed"
            ) from exc
    if result.exit_code == EXIT_INVALID_MODEL:
        raise ExecutionError(
            f"not a valid ONNX model: {_reported_error(result.stdout)}",
            code="invalid_model",
            hint=INVALID_MODEL_HINT,
        )
    detail = result.stderr.decode("utf-8", errors="replace").strip()[-MAX_SHOWN_ERROR:]
    raise ExecutionError(
        f"the model check did not finish ({result.status}: {result.reason})"
        + (f": {detail}" if detail else ""),
        code="model_check_failed",
    )


def _reported_error(stdout: bytes) -> str:
    try:
        error = json.loads(stdout)["error"]
    except (ValueError, KeyError, TypeError):
        error = None
    if not isinstance(error, str):
        return "the check gave no reason"
    return error[:MAX_SHOWN_ERROR]


def _input_files(request: ExecutionRequest) -> dict[str, bytes]:
    return {path: content for path, content, _ in request.inputs}
