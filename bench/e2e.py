"""End-to-end latency and throughput on a real local mesh.

Starts nats-server and 3 provider processes (bubblewrap sandbox), submits trivial jobs
(`echo`) with bounded concurrency, and measures submit-to-verified-result latency (p50/p99)
and jobs/s. In the same run it times a bare ``subprocess.run`` of the same command as the
baseline and prints the ratio.

    python bench/e2e.py [--jobs 200] [--nodes 3] [--concurrency 8] [--quick] [--json]
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
from pathlib import Path
from typing import Any

from computemesh.app.consumer import consumer_session
from computemesh.app.home import MeshHome
from computemesh.app.localmesh import mesh_down, mesh_up
from computemesh.models.job import JobSpec
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs

COMMAND = ["echo", "hello"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def bare_subprocess_ms(runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(COMMAND, check=True, capture_output=True)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def trivial_spec(index: int) -> JobSpec:
    spec = JobSpec.model_validate(
        {
            "name": f"bench-{index}",
            "command": COMMAND,
            "resources": {"cpu": 0.1, "memory_mb": 64},
            "timeout_s": 30,
        }
    )
    return resolve_inputs(spec, Path("."))


async def one_job(orchestrator: Orchestrator, index: int, gate: asyncio.Semaphore) -> float:
    async with gate:
        started = time.perf_counter()
        record = await orchestrator.run(trivial_spec(index), timeout=60)
        elapsed = (time.perf_counter() - started) * 1000
    if record.status != "completed" or not record.verified:
        raise RuntimeError(f"job {record.job_id} ended {record.status}: {record.reason}")
    return elapsed


async def measure(home: MeshHome, url: str, jobs: int, concurrency: int) -> dict[str, Any]:
    settings = OrchestratorSettings(bid_window_s=1.0)
    async with consumer_session(home, url, settings=settings) as orchestrator:
        await orchestrator.discover(window_s=0.5)
        await one_job(orchestrator, -1, asyncio.Semaphore(1))  # warm-up
        gate = asyncio.Semaphore(concurrency)
        started = time.perf_counter()
        latencies = await asyncio.gather(*(one_job(orchestrator, i, gate) for i in range(jobs)))
        wall = time.perf_counter() - started
    return {
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "jobs_per_s": round(jobs / wall, 2),
        "wall_s": round(wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="50 jobs (about half a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    jobs = 50 if args.quick else args.jobs
    bare_ms = bare_subprocess_ms(50)
    with tempfile.TemporaryDirectory(prefix="cmesh-bench-") as tmp:
        home = MeshHome(Path(tmp))
        state = mesh_up(home, nodes=args.nodes)
        try:
            figures = asyncio.run(measure(home, state["nats_url"], jobs, args.concurrency))
        finally:
            mesh_down(home)
    result = {
        "jobs": jobs,
        "nodes": args.nodes,
        "concurrency": args.concurrency,
        **figures,
        "bare_ms": round(bare_ms, 3),
        "p50_over_bare": round(figures["p50_ms"] / bare_ms, 1),
        "machine": f"{platform.machine()} {platform.node()} python {platform.python_version()}",
    }
    print(f"{'metric':<22}{'value':>14}")
    for key in (
        "jobs",
        "nodes",
        "concurrency",
        "p50_ms",
        "p99_ms",
        "jobs_per_s",
        "wall_s",
        "bare_ms",
        "p50_over_bare",
    ):
        print(f"{key:<22}{result[key]:>14}")
    if args.json:
        print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
