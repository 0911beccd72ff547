"""Sandbox start-up: start-to-exit overhead of a trivial job under each executor.

Runs a job that does nothing, many times, through the executor interface
(``run_to_completion``: work dir, inputs, start, wait, outputs, cleanup) and reports the
median and p90 in milliseconds:

* ``process``: ``true`` under bubblewrap (``ProcessExecutor``);
* ``wasm``: a module whose ``_start`` returns at once (``WasmExecutor``), with the compiled
  module already cached (warm), and also compiled afresh each run (cold); ``wasm_guest``
  is the part inside the worker thread (store, WASI, instantiate, ``_start``);
* baseline, in the same run: a bare ``subprocess.run(["true"])``.

    python bench/sandbox.py [--runs 200] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from computemesh.executor import (
    ExecutionRequest,
    ModuleCache,
    ProcessExecutor,
    SandboxLimits,
    WasmExecutor,
    bubblewrap_available,
    run_to_completion,
)

LIMITS = SandboxLimits(wall_time_s=30, cpu_time_s=10, memory_mb=64)
TRIVIAL_MODULE = b'(module (func (export "_start")))'
ANCHORS_MS = {"docker_container_ms": 570.0, "firecracker_microvm_ms": 125.0}


def summary(timings_ms: list[float]) -> dict[str, float]:
    ordered = sorted(timings_ms)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"median": round(statistics.median(ordered), 3), "p90": round(p90, 3)}


def bare_runs(runs: int) -> list[float]:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["true"], check=True)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def trivial_request(command: list[str], inputs: list[tuple[str, bytes, bool]]) -> ExecutionRequest:
    return ExecutionRequest(
        job_id="bench", command=command, env={}, inputs=inputs, outputs=[], limits=LIMITS
    )


async def timed_runs(runs: int, one_run: Callable[[], Awaitable[None]]) -> list[float]:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        await one_run()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


async def executor_runs(runs: int, work_root: Path) -> dict[str, list[float]]:
    """Timings (ms) per executor; a missing bubblewrap leaves out ``process``."""
    timings: dict[str, list[float]] = {}
    wasm_request = trivial_request(["main.wat"], [("main.wat", TRIVIAL_MODULE, False)])
    warm = WasmExecutor()
    guest_ms: list[float] = []

    async def wasm_warm() -> None:
        result = await run_to_completion(warm, wasm_request, work_root)
        assert result.status == "completed", result.reason
        guest_ms.append(result.usage.wall_s * 1000)

    async def wasm_cold() -> None:
        cold = WasmExecutor(cache=ModuleCache())
        result = await run_to_completion(cold, wasm_request, work_root)
        assert result.status == "completed", result.reason

    await wasm_warm()
    timings["wasm"] = await timed_runs(runs, wasm_warm)
    timings["wasm_guest"] = guest_ms[1:]
    timings["wasm_cold"] = await timed_runs(max(5, runs // 10), wasm_cold)
    if bubblewrap_available():
        sandboxed = ProcessExecutor(sandbox=True)
        process_request = trivial_request(["true"], [])

        async def process() -> None:
            result = await run_to_completion(sandboxed, process_request, work_root)
            assert result.status == "completed", result.reason

        await process()
        timings["process"] = await timed_runs(runs, process)
    return timings


def onnx_ratio(quick: bool) -> tuple[float | None, str]:
    """Inference throughput in the sandbox over onnxruntime called directly (onnx_inference.py)."""
    try:
        from onnx_inference import onnx_sandbox_ratio
    except ImportError as exc:
        return None, f"onnx benchmark unavailable: {exc}"
    try:
        return onnx_sandbox_ratio(quick=quick), "worse of two models; see bench/onnx_inference.py"
    except Exception as exc:
        return None, f"onnx benchmark failed: {exc}"


def measure(runs: int, *, quick: bool) -> dict[str, Any]:
    bare = summary(bare_runs(runs))
    with tempfile.TemporaryDirectory(prefix="cmesh-bench-sandbox-") as tmp:
        timings = asyncio.run(executor_runs(runs, Path(tmp)))
    figures = {name: summary(values) for name, values in timings.items()}
    ratio, note = onnx_ratio(quick)
    process = figures.get("process")
    wasm, wasm_cold = figures["wasm"], figures["wasm_cold"]
    result: dict[str, Any] = {
        "runs": runs,
        "bare_ms": bare["median"],
        "bare_p90_ms": bare["p90"],
        "process_ms": process["median"] if process else None,
        "process_p90_ms": process["p90"] if process else None,
        "wasm_ms": wasm["median"],
        "wasm_p90_ms": wasm["p90"],
        "wasm_cold_ms": wasm_cold["median"],
        "wasm_guest_ms": figures["wasm_guest"]["median"],
        "process_over_bare": round(process["median"] / bare["median"], 2) if process else None,
        "wasm_over_bare": round(wasm["median"] / bare["median"], 2),
        "process_over_wasm": round(process["median"] / wasm["median"], 1) if process else None,
        "onnx_sandbox_ratio": ratio,
        "onnx_note": note,
        **ANCHORS_MS,
        "machine": f"{platform.machine()} {platform.node()} python {platform.python_version()}",
    }
    if process is None:
        result["process_note"] = "bubblewrap (bwrap) is not installed"
    return result


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("bare subprocess.run(['true'])", result["bare_ms"], result["bare_p90_ms"]),
        ("process (bubblewrap, true)", result["process_ms"], result["process_p90_ms"]),
        ("wasm (warm module cache)", result["wasm_ms"], result["wasm_p90_ms"]),
        ("wasm (compiled each run)", result["wasm_cold_ms"], None),
        ("  of warm wasm: the guest thread", result["wasm_guest_ms"], None),
        ("anchor: Docker container start", result["docker_container_ms"], None),
        ("anchor: Firecracker microVM boot", result["firecracker_microvm_ms"], None),
    ]
    print(f"{'start to exit, ms':<36}{'median':>10}{'p90':>10}")
    for label, median, p90 in rows:
        shown = ["-" if value is None else f"{value:.3f}" for value in (median, p90)]
        print(f"{label:<36}{shown[0]:>10}{shown[1]:>10}")
    for key in ("process_over_bare", "wasm_over_bare", "process_over_wasm", "onnx_sandbox_ratio"):
        print(f"{key:<36}{'-' if result[key] is None else result[key]:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per executor")
    parser.add_argument("--quick", action="store_true", help="50 runs each (a few seconds)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    result = measure(50 if args.quick else args.runs, quick=args.quick)
    print_table(result)
    if args.json:
        print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
