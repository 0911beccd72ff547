"""ONNX inference inside the bubblewrap sandbox against onnxruntime called directly.

For each model, one function (``throughput``: open a session as the onnx runner does,
warm up, then run it back to back for a fixed time) is measured three ways, all with one
onnxruntime thread, in alternating rounds (the median round of each way is kept):

    direct    in this process, with this interpreter
    host      in a child process, with the interpreter jobs get, outside any sandbox
    sandbox   as a job of the onnx executor's own process executor: bubblewrap, the
              python runtime bound read-only, the job's uid and rlimits

``onnx_sandbox_ratio`` is sandbox / direct inferences per second for the worse of the two
models (1.0: no cost); ``ratio_p50`` compares median latencies instead, which preemption
by other work on a small shared machine disturbs less.

It also times whole onnx jobs (model cached, so no check run): prepare, sandbox start,
interpreter and onnxruntime import, one inference, output collection, cleanup, against
opening a session and running it once in this process.

    python bench/onnx_inference.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import io
import itertools
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from computemesh.executor import (
    ExecutionRequest,
    ModelCache,
    OnnxExecutor,
    SandboxLimits,
    onnx_runner,
    run_to_completion,
)
from computemesh.executor.onnx import python_runtime_for_onnx

LIMITS = SandboxLimits(wall_time_s=120, cpu_time_s=120, memory_mb=1024)
JOB_SCRIPT = "bench_job.py"


def throughput(open_session: Callable[..., Any], model: str, x: Any, seconds: float) -> dict:
    """Inferences per second and median latency of ``model`` on ``x``, one thread."""
    import time as clock

    session = open_session(model, threads=1)
    feeds = {session.get_inputs()[0].name: x}
    for _ in range(20):
        session.run(None, feeds)
    latencies = []
    started = clock.perf_counter()
    while clock.perf_counter() - started < seconds:
        begin = clock.perf_counter()
        session.run(None, feeds)
        latencies.append(clock.perf_counter() - begin)
    elapsed = clock.perf_counter() - started
    latencies.sort()
    return {"per_s": len(latencies) / elapsed, "p50_us": latencies[len(latencies) // 2] * 1e6}


def job_script() -> str:
    """A program that runs ``throughput`` where nothing of computemesh is importable."""
    return "\n".join(
        [
            "from __future__ import annotations",
            "import json, os, sys",
            "plan = json.loads(sys.argv[1])",
            "sys.path[:0] = plan['path'] + [os.getcwd()]",
            "import numpy",
            "from onnx_runner import open_session",
            inspect.getsource(throughput),
            "x = numpy.load(plan['x'])",
            "print(json.dumps(throughput(open_session, plan['model'], x, plan['seconds'])))",
        ]
    )


def mlp(sizes: list[int], seed: int) -> bytes:
    """An MLP (Gemm + Relu layers) with seeded random float32 weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights, previous = [], [], "x"
    for index, (rows, cols) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{index}")]
        weights += [numpy_helper.from_array(np.zeros(cols, np.float32), f"b{index}")]
        nodes.append(helper.make_node("Gemm", [previous, f"w{index}", f"b{index}"], [f"g{index}"]))
        previous = f"g{index}"
        if index < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [previous], [f"r{index}"]))
            previous = f"r{index}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["N", sizes[-1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def models() -> dict[str, tuple[bytes, np.ndarray]]:
    rng = np.random.default_rng(1)
    return {
        "mlp 4-8-2, batch 1": (mlp([4, 8, 2], 0), rng.standard_normal((1, 4)).astype(np.float32)),
        "mlp 256-1024-1024-10, batch 32": (
            mlp([256, 1024, 1024, 10], 0),
            rng.standard_normal((32, 256)).astype(np.float32),
        ),
    }


def plan(executor: OnnxExecutor, seconds: float, *, sandboxed: bool) -> str:
    paths = list(executor.runtime.import_paths(sandboxed=sandboxed))
    return json.dumps({"path": paths, "model": "m.onnx", "x": "x.npy", "seconds": seconds})


def files(model: bytes, x: np.ndarray) -> dict[str, bytes]:
    return {
        "m.onnx": model,
        "x.npy": npy(x),
        "onnx_runner.py": Path(onnx_runner.__file__).read_bytes(),
        JOB_SCRIPT: job_script().encode(),
    }


async def in_sandbox(
    executor: OnnxExecutor, model: bytes, x: np.ndarray, seconds: float, work_root: Path
) -> dict:
    request = ExecutionRequest(
        job_id=f"bench-{secrets.token_hex(4)}",
        command=[
            executor.runtime.interpreter,
            "-I",
            JOB_SCRIPT,
            plan(executor, seconds, sandboxed=True),
        ],
        env={"ORT_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
        inputs=[(path, data, False) for path, data in files(model, x).items()],
        outputs=[],
        limits=LIMITS,
    )
    result = await run_to_completion(executor.process, request, work_root)
    if result.status != "completed":
        raise RuntimeError(f"sandboxed run {result.status}: {result.stderr.decode()[-2000:]}")
    return dict(json.loads(result.stdout))


def on_host(executor: OnnxExecutor, model: bytes, x: np.ndarray, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="cmesh-onnx-bench-") as tmp:
        for path, data in files(model, x).items():
            (Path(tmp) / path).write_bytes(data)
        command = [executor.runtime.interpreter, "-I", JOB_SCRIPT]
        command.append(plan(executor, seconds, sandboxed=False))
        env = {"ORT_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", "PATH": os.defpath}
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"host run failed: {done.stderr.decode()[-2000:]}")
    return dict(json.loads(done.stdout))


def direct(model: bytes, x: np.ndarray, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="cmesh-onnx-bench-") as tmp:
        path = Path(tmp) / "m.onnx"
        path.write_bytes(model)
        return throughput(onnx_runner.open_session, str(path), x, seconds)


async def job_latency(executor: OnnxExecutor, work_root: Path, jobs: int) -> tuple[float, float]:
    """Median ms of a whole onnx job (model cached) and of session + one direct inference."""
    model, x = models()["mlp 4-8-2, batch 1"]
    request = ExecutionRequest(
        job_id="bench-job",
        command=["m.onnx", "x.npy"],
        env={},
        inputs=[("m.onnx", model, False), ("x.npy", npy(x), False)],
        outputs=["y.npy"],
        limits=LIMITS,
    )
    sandboxed, local = [], []
    for _ in range(jobs + 1):
        started = time.perf_counter()
        result = await run_to_completion(executor, request, work_root)
        sandboxed.append((time.perf_counter() - started) * 1000)
        if result.status != "completed":
            raise RuntimeError(f"onnx job {result.status}: {result.stderr.decode()[-2000:]}")
        with tempfile.TemporaryDirectory(prefix="cmesh-onnx-bench-") as tmp:
            started = time.perf_counter()
            (Path(tmp) / "m.onnx").write_bytes(model)
            session = onnx_runner.open_session(str(Path(tmp) / "m.onnx"), threads=1)
            session.run(None, {"x": x})
            local.append((time.perf_counter() - started) * 1000)
    return statistics.median(sandboxed[1:]), statistics.median(local[1:])


def best_of(runs: list[dict]) -> dict:
    """The run with the median throughput (rounds alternate the three ways to measure)."""
    return sorted(runs, key=lambda run: run["per_s"])[len(runs) // 2]


async def measure(seconds: float, rounds: int, jobs: int, root: Path) -> dict[str, Any]:
    executor = OnnxExecutor(runtime=python_runtime_for_onnx(), cache=ModelCache(root / "cache"))
    figures: dict[str, Any] = {"models": {}}
    for name, (model, x) in models().items():
        runs: dict[str, list[dict]] = {"direct": [], "host": [], "sandbox": []}
        for _ in range(rounds):
            runs["direct"].append(direct(model, x, seconds))
            runs["host"].append(on_host(executor, model, x, seconds))
            runs["sandbox"].append(await in_sandbox(executor, model, x, seconds, root / "work"))
        row: dict[str, Any] = {where: best_of(found) for where, found in runs.items()}
        row["ratio"] = row["sandbox"]["per_s"] / row["direct"]["per_s"]
        row["ratio_p50"] = row["direct"]["p50_us"] / row["sandbox"]["p50_us"]
        row["ratio_same_interpreter"] = row["sandbox"]["per_s"] / row["host"]["per_s"]
        figures["models"][name] = row
    job_ms, direct_ms = await job_latency(executor, root / "work", jobs)
    figures.update(job_ms=round(job_ms, 1), direct_job_ms=round(direct_ms, 2))
    figures["interpreter"] = executor.runtime.interpreter
    return figures


def print_table(figures: dict[str, Any]) -> None:
    header = f"{'model':<32}{'direct/s':>10}{'host/s':>10}{'sandbox/s':>10}{'ratio':>7}"
    print(header + f"{'p50 direct/host/sandbox us':>30}{'p50 ratio':>10}")
    for name, row in figures["models"].items():
        ways = ("direct", "host", "sandbox")
        rates = "".join(f"{row[way]['per_s']:>10.0f}" for way in ways)
        p50 = " / ".join(f"{row[way]['p50_us']:.1f}" for way in ways)
        print(f"{name:<32}{rates}{row['ratio']:>7.3f}{p50:>30}{row['ratio_p50']:>10.3f}")
    print(f"whole onnx job (cached model): {figures['job_ms']} ms median")
    print(f"session + one inference in process: {figures['direct_job_ms']} ms median")
    print(f"sandbox interpreter: {figures['interpreter']}")


def collect(*, quick: bool) -> dict[str, Any]:
    """Run every measurement; ``onnx_sandbox_ratio`` is the last key of what it returns."""
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    seconds, rounds, jobs = (1.0, 1, 5) if quick else (2.0, 5, 20)
    with tempfile.TemporaryDirectory(prefix="cmesh-onnx-bench-") as tmp:
        figures = asyncio.run(measure(seconds, rounds, jobs, Path(tmp)))
    return {
        **figures,
        "seconds_per_measurement": seconds,
        "rounds": rounds,
        "machine": f"{platform.machine()} python {platform.python_version()}",
        "onnx_sandbox_ratio": round(min(r["ratio"] for r in figures["models"].values()), 3),
    }


def onnx_sandbox_ratio(*, quick: bool = True) -> float:
    """Sandbox / direct inference throughput (the worse model), for other benchmarks.

    Must be called outside a running event loop; takes ~10 s quick, ~80 s in full.
    """
    return float(collect(quick=quick)["onnx_sandbox_ratio"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 1 s per measurement, 5 jobs"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    result = collect(quick=args.quick)
    print_table(result)
    if args.json:
        print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
