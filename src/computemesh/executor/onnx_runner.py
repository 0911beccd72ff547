"""Runs one ONNX model with onnxruntime: the program an ``onnx`` job executes in its sandbox.

Standalone on purpose. It is copied into the job's work directory and started as
``python3.X -I <runner> MODE PLAN``, where nothing of computemesh is importable: it uses
the standard library, numpy, onnxruntime and (to check a model, when present) onnx,
imported from the directories the plan lists. ``PLAN`` is one JSON object (so that no
model, input or file name is ever read as an option):

    {"path": [DIR...], "model": FILE, "threads": N,
     "inputs": {NAME: FILE...}, "outputs": {NAME: FILE...}}

    inspect   Check the model (``onnx.checker.check_model``, then loading it in
              onnxruntime). Prints its signature as JSON (inputs and outputs: name,
              type, dtype, shape) and exits 0; prints ``{"error": ...}`` and exits 3
              when it is not a usable model. Uses ``path`` and ``model`` only.
    run       Feed each input (``.npy`` loaded without pickles; ``.json`` nested lists
              as the input's declared type), run the model on the CPU, save each named
              output as ``.npy`` and print a JSON summary: the name, file, dtype and
              shape of each output. Exits 4 with a message on stderr when an input
              cannot be read or the model cannot run on it.

Output on stdout is deterministic (sorted keys, no timings), so replicas can compare it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

EXIT_INVALID_MODEL = 3
EXIT_BAD_RUN = 4
MAX_ERROR_CHARS = 2000

TENSOR_TYPES = {
    "tensor(bool)": "bool",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
}
"""onnxruntime's element type strings, as numpy dtype names (other types are not fed)."""


def main(argv: list[str] | None = None) -> int:
    """Run ``MODE PLAN`` from ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 2 or arguments[0] not in ("inspect", "run"):
        print("usage: onnx_runner.py inspect|run PLAN", file=sys.stderr)
        return 2
    mode, plan = arguments[0], json.loads(arguments[1])
    sys.path[:0] = plan["path"]
    if mode == "inspect":
        return inspect(plan["model"])
    return run(plan["model"], plan["inputs"], plan["outputs"], threads=plan["threads"])


def inspect(model: str) -> int:
    """Print the model's signature (exit 0) or why it is unusable (exit 3)."""
    try:
        _check_with_onnx(model)
        session = open_session(model, threads=1)
    except Exception as exc:
        _print_json({"error": _short(exc)})
        return EXIT_INVALID_MODEL
    _print_json(
        {
            "inputs": [_describe(value) for value in session.get_inputs()],
            "outputs": [_describe(value) for value in session.get_outputs()],
        }
    )
    return 0


def run(model: str, inputs: dict[str, str], outputs: dict[str, str], *, threads: int) -> int:
    """Feed ``inputs`` (name -> file), save ``outputs`` (name -> file), print a summary."""
    import numpy as np

    session = open_session(model, threads=threads)
    declared = {value.name: TENSOR_TYPES.get(value.type) for value in session.get_inputs()}
    try:
        feeds = {name: load_tensor(path, declared.get(name)) for name, path in inputs.items()}
        values = session.run(list(outputs), feeds)
    except Exception as exc:
        print(f"onnx run failed: {_short(exc)}", file=sys.stderr)
        return EXIT_BAD_RUN
    summary = []
    for (name, path), value in zip(outputs.items(), values, strict=True):
        array = np.asarray(value)
        np.save(path, array, allow_pickle=False)
        summary.append(
            {"name": name, "file": path, "dtype": array.dtype.name, "shape": list(array.shape)}
        )
    _print_json({"model": model, "outputs": summary})
    return 0


def open_session(model: str, *, threads: int) -> Any:
    """An onnxruntime session on the CPU with ``threads`` intra-op threads and no spinning."""
    import onnxruntime  # type: ignore[import-untyped]

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(
        model, sess_options=options, providers=["CPUExecutionProvider"]
    )


def load_tensor(path: str, dtype: str | None) -> Any:
    """The array in ``path``: ``.npy`` (no pickles) or ``.json`` cast to ``dtype``."""
    import numpy as np

    if path.endswith(".json"):
        with open(path, encoding="utf-8") as handle:
            return np.asarray(json.load(handle), dtype=dtype)
    return np.load(path, allow_pickle=False)


def _check_with_onnx(model: str) -> None:
    try:
        import onnx.checker
    except ImportError:
        return
    onnx.checker.check_model(model)


def _describe(value: Any) -> dict[str, Any]:
    shape = value.shape
    if shape is not None:
        shape = [dim if isinstance(dim, int) and dim >= 0 else None for dim in shape]
    return {
        "name": value.name,
        "type": value.type,
        "dtype": TENSOR_TYPES.get(value.type),
        "shape": shape,
    }


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]


def _print_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(main())
