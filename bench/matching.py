"""Matching throughput and latency on synthetic heterogeneous fleets.

Builds fleets of random nodes (12 regions with measured latencies, x86_64/aarch64/riscv64,
2 to 128 cores, a fifth with GPUs of five kinds, organisations, reputations, prices) and
jobs drawn from templates (small and large CPU jobs, GPU jobs, region, architecture,
price, organisation and reputation constraints, replicas). Measures:

- batch placements/s: 10,000 jobs onto 10,000 and onto 100,000 nodes (``assign_batch``);
- single placement latency p50/p99 at 100,000 nodes (``match_job``, best 10);
- CP-SAT time (building the model and searching) for a 10-allocation ensemble with latency
  bounds and a spread rule, each allocation ranking 1,000 candidates of 2,000 nodes
  (``place_ensemble``; the whole call is reported too);
- the baseline, in the same run: a plain per-job Python loop over the nodes with the same
  constraint semantics (``failed_constraints``) and the same greedy capacity accounting,
  timed on a subset of the jobs and extrapolated to placements/s.

Batch figures are the best of several runs (2 with ``--quick``, 5 otherwise), in wall-clock
time (and, as ``*_cpu``, in CPU time of this process, which other load on a shared
machine disturbs less); latencies are per call, compiling the job spec included.

    python bench/matching.py [--quick] [--json] [--seed 7]

With ``--json`` the last line is one JSON object; ``REQUIRED_KEYS`` are always in it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from computemesh.matching import (
    NodeIndex,
    Requirement,
    assign_batch,
    failed_constraints,
    match_job,
    place_ensemble,
)
from computemesh.matching.constraints import offered_amounts
from computemesh.matching.scoring import (
    NEUTRAL,
    did_tiebreak,
    price_score,
    reputation_score,
    weight_vector,
)
from computemesh.models.ensemble import EnsembleSpec
from computemesh.models.job import JobSpec
from computemesh.models.market import Advertisement

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
REGIONS = {
    # region: (country, cities, x, y) -- positions on a plane, in ms of round trip
    "eu-west": ("IE", ["Dublin", "Cork"], 0, 0),
    "eu-central": ("DE", ["Frankfurt", "Berlin"], 12, 4),
    "eu-north": ("SE", ["Stockholm"], 18, -14),
    "eu-south": ("IT", ["Milan"], 16, 14),
    "us-east": ("US", ["Ashburn", "New York"], -70, 6),
    "us-west": ("US", ["Portland", "San Jose"], -130, 10),
    "ca-central": ("CA", ["Montreal"], -72, -4),
    "sa-east": ("BR", ["Sao Paulo"], -60, 110),
    "ap-south": ("IN", ["Mumbai"], 110, 60),
    "ap-southeast": ("SG", ["Singapore"], 160, 90),
    "ap-northeast": ("JP", ["Tokyo"], 210, 20),
    "af-south": ("ZA", ["Cape Town"], 40, 150),
}
GPUS = [
    ("NVIDIA A100-SXM4-80GB", "nvidia", 81920, "8.0"),
    ("NVIDIA H100 80GB HBM3", "nvidia", 81920, "9.0"),
    ("Tesla T4", "nvidia", 15360, "7.5"),
    ("NVIDIA GeForce RTX 4090", "nvidia", 24564, "8.9"),
    ("AMD Instinct MI250X", "amd", 65536, None),
]
ORGANISATIONS = [f"org-{n}" for n in range(20)]


def region_rtt(a: str, b: str) -> float:
    if a == b:
        return 2.0
    ax, ay = REGIONS[a][2:]
    bx, by = REGIONS[b][2:]
    return round(max(1.0, float(np.hypot(ax - bx, ay - by))), 2)


def synthetic_fleet(count: int, seed: int) -> list[tuple[str, Advertisement]]:
    """``count`` random nodes (all random draws vectorised, then validated one by one)."""
    rng = np.random.default_rng(seed)
    regions = list(REGIONS)
    draws = {
        "did": rng.integers(0, len(ALPHABET), size=(count, 40)),
        "region": rng.integers(0, len(regions), size=count),
        "cpus": rng.choice([2, 4, 8, 16, 32, 64, 128], size=count, p=CPU_SHARES),
        "gb_per_cpu": rng.choice([2, 4, 8], size=count),
        "disk": rng.choice([50_000, 200_000, 1_000_000, 4_000_000], size=count),
        "gpu_kind": np.where(rng.random(count) < 0.2, rng.integers(0, len(GPUS), count), -1),
        "gpus": rng.choice([1, 2, 4, 8], size=count),
        "used": rng.uniform(0.0, 0.7, size=count),
        "arch": rng.choice(["x86_64", "aarch64", "riscv64"], size=count, p=[0.8, 0.18, 0.02]),
        "wasm": rng.random(count) < 0.25,
        "price": np.round(rng.uniform(0.02, 0.5, size=count), 3),
        "city": rng.integers(0, 2, size=count),
        "org": np.where(rng.random(count) < 0.3, rng.integers(0, len(ORGANISATIONS), count), -1),
        "reputation": np.where(
            rng.random(count) < 0.8, np.round(rng.uniform(0.3, 1, count), 3), -1
        ),
        "reported": rng.random((count, len(regions))) < 0.5,
        "noise": rng.uniform(0.9, 1.2, size=(count, len(regions))),
    }
    return [(_did(draws, n), Advertisement.model_validate(_node(draws, n))) for n in range(count)]


CPU_SHARES = [0.1, 0.2, 0.25, 0.2, 0.13, 0.08, 0.04]


def _did(draws: dict[str, Any], n: int) -> str:
    return "did:key:z6Mk" + "".join(ALPHABET[int(c)] for c in draws["did"][n])


def _node(draws: dict[str, Any], n: int) -> dict[str, Any]:
    regions = list(REGIONS)
    region = regions[int(draws["region"][n])]
    country, cities = REGIONS[region][0], REGIONS[region][1]
    cpus = int(draws["cpus"][n])
    memory = cpus * 1024 * int(draws["gb_per_cpu"][n])
    disk = int(draws["disk"][n])
    kind = int(draws["gpu_kind"][n])
    gpus: list[dict[str, Any]] = []
    if kind >= 0:
        model, vendor, vram, capability = GPUS[kind]
        gpu = {"model": model, "vendor": vendor, "vram_mb": vram, "compute_capability": capability}
        gpus = [gpu] * int(draws["gpus"][n])
    left = 1.0 - float(draws["used"][n])
    reputation = float(draws["reputation"][n])
    return {
        "hardware": {
            "cpu_count": cpus,
            "architecture": str(draws["arch"][n]),
            "memory_mb": memory,
            "disk_mb": disk,
            "gpus": gpus,
        },
        "region": region,
        "executors": ["wasm"] if draws["wasm"][n] else ["process"],
        "price_per_cpu_hour": float(draws["price"][n]),
        "sandboxed": True,
        "free": {
            "cpu": round(cpus * left * 2) / 2,
            "memory_mb": int(memory * left),
            "disk_mb": disk,
            "gpu_count": len(gpus),
        },
        "version": "0.1.0",
        "country": country,
        "city": cities[int(draws["city"][n]) % len(cities)],
        "organisations": [ORGANISATIONS[int(draws["org"][n])]] if draws["org"][n] >= 0 else [],
        "reputation": reputation if reputation >= 0 else None,
        "latency_ms": {
            other: round(region_rtt(region, other) * float(draws["noise"][n][k]), 2)
            for k, other in enumerate(regions)
            if draws["reported"][n][k] or other == region
        },
    }


JOB_TEMPLATES: list[tuple[float, dict[str, Any]]] = [
    (0.40, {"resources": {"cpu": [0.5, 1, 2], "memory_mb": [256, 512, 1024, 2048]}}),
    (0.12, {"resources": {"cpu": [4, 8], "memory_mb": [8192, 16384]}}),
    (0.08, {"resources": {"cpu": [1, 2]}, "constraints": {"regions": ["eu-west", "eu-central"]}}),
    (0.06, {"resources": {"cpu": [2]}, "constraints": {"architectures": ["aarch64"]}}),
    (0.08, {"resources": {"cpu": [1, 2]}, "constraints": {"max_price_per_cpu_hour": 0.2}}),
    (0.04, {"resources": {"cpu": [1]}, "constraints": {"organisations": ["org-3", "org-7"]}}),
    (0.06, {"resources": {"cpu": [1, 2]}, "constraints": {"min_reputation": 0.7}}),
    (0.04, {"resources": {"cpu": [1]}, "constraints": {"exclude_countries": ["US", "CA"]}}),
    (0.04, {"resources": {"cpu": [1]}, "replicas": 3}),
    (0.04, {"resources": {"cpu": [4], "gpu_count": [1], "vram_mb": 24000}}),
    (0.02, {"resources": {"cpu": [8], "gpu_count": [2], "gpu_model": "A100"}}),
    (0.02, {"resources": {"cpu": [4], "gpu_count": [1], "min_compute_capability": "8.9"}}),
]


def synthetic_jobs(count: int, seed: int) -> list[tuple[str, JobSpec]]:
    rng = np.random.default_rng(seed)
    weights = np.array([w for w, _ in JOB_TEMPLATES])
    picks = rng.choice(len(JOB_TEMPLATES), size=count, p=weights / weights.sum())
    jobs = []
    for number, pick in enumerate(picks):
        template = JOB_TEMPLATES[int(pick)][1]
        resources = {
            key: (value[int(rng.integers(len(value)))] if isinstance(value, list) else value)
            for key, value in template["resources"].items()
        }
        data = {**template, "name": f"job-{number}", "command": ["run"], "resources": resources}
        jobs.append((f"{number:08d}", JobSpec.model_validate(data)))
    return jobs


def build_index(fleet: list[tuple[str, Advertisement]]) -> NodeIndex:
    index = NodeIndex(capacity=len(fleet))
    for did, advert in fleet:
        index.upsert(did, advert, seen_at=0.0)
    return index


def baseline_batch(fleet: list[tuple[str, Advertisement]], jobs: list[tuple[str, JobSpec]]) -> int:
    """Per job, loop over every node in Python: same checks, scores and greedy bookkeeping."""
    free = {did: offered_amounts(advert) for did, advert in fleet}
    placed = 0
    for _, spec in sorted(jobs, key=largest_first):
        need = Requirement.of(spec)
        w = weight_vector(need.weights)
        fitting = []
        for did, advert in fleet:
            if failed_constraints(need, advert, did, free[did]):
                continue
            qualities = (
                price_score(advert.price_per_cpu_hour),
                reputation_score(advert.reputation),
                free[did][0] / advert.hardware.cpu_count,
                NEUTRAL,
            )
            score = (
                w[0] * qualities[0]
                + w[2] * qualities[1]
                + w[3] * qualities[2]
                + w[4] * qualities[3]
            )
            fitting.append((score, did_tiebreak(did), did))
        if len(fitting) < need.replicas:
            continue
        fitting.sort(reverse=True)
        for _, _, did in fitting[: need.replicas]:
            left = [f - n for f, n in zip(free[did], need.amounts, strict=True)]
            free[did] = (left[0], left[1], left[2], left[3])
        placed += 1
    return placed


def largest_first(item: tuple[str, JobSpec]) -> tuple[float, float, float, float, str]:
    job_id, spec = item
    need = spec.resources
    return (-need.gpu_count, -need.cpu, -need.memory_mb, -need.disk_mb, job_id)


def time_batch(index: NodeIndex, jobs: list[tuple[str, JobSpec]]) -> tuple[float, float, int]:
    """Wall-clock and CPU seconds of one ``assign_batch``, and how many jobs it placed."""
    started, cpu = time.perf_counter(), time.process_time()
    result = assign_batch(index, jobs)
    return time.perf_counter() - started, time.process_time() - cpu, len(result.placements)


def single_latencies(index: NodeIndex, jobs: list[tuple[str, JobSpec]]) -> list[float]:
    timings = []
    for _, spec in jobs:
        started = time.perf_counter()
        match_job(index, spec, limit=10)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def ensemble_spec(allocations: int) -> EnsembleSpec:
    names = [f"part-{n}" for n in range(allocations)]
    specs = [
        {"name": name, "command": ["run"], "resources": {"cpu": 2, "memory_mb": 2048}}
        for name in names
    ]
    bounds = [
        {"a": names[n], "b": names[m], "max_rtt_ms": 40.0 if m == n + 1 else 120.0}
        for n in range(allocations)
        for m in range(n + 1, allocations)
        if m == n + 1 or m % 3 == 0
    ]
    return EnsembleSpec.model_validate(
        {"name": "bench", "allocations": specs, "latency": bounds, "spread": [names]}
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


@dataclass(frozen=True)
class Sizes:
    """How much one run measures; the keys keep their names (``_10k``, ``_100k``) whatever
    the sizes, so that reports compare across runs."""

    small_nodes: int
    large_nodes: int
    jobs: int
    single_jobs: int
    ensemble_nodes: int
    ensemble_candidates: int
    baseline_jobs: int
    runs: int


FULL = Sizes(10_000, 100_000, 10_000, 3000, 2_000, 1_000, 100, runs=5)
QUICK = Sizes(10_000, 100_000, 10_000, 500, 2_000, 1_000, 20, runs=2)

REQUIRED_KEYS = (
    "placements_per_s_10k",
    "placements_per_s_100k",
    "p99_single_ms_100k",
    "baseline_placements_per_s_10k",
    "cpsat_ensemble_s",
)


def best_of(
    runs: int, index: NodeIndex, jobs: list[tuple[str, JobSpec]]
) -> tuple[float, float, int]:
    timings = [time_batch(index, jobs) for _ in range(runs)]
    return min(t[0] for t in timings), min(t[1] for t in timings), timings[0][2]


def ensemble_seconds(index: NodeIndex, runs: int, candidates: int) -> tuple[float, float, str]:
    """Median CP-SAT time (model and search) and whole ``place_ensemble`` call, status."""
    spec = ensemble_spec(10)
    solver, total, status = [], [], ""
    for _ in range(runs):
        started = time.perf_counter()
        result = place_ensemble(index, spec, max_candidates=candidates)
        total.append(time.perf_counter() - started)
        solver.append(result.solve_ms / 1000)
        status = result.status
    return statistics.median(solver), statistics.median(total), status


def measure(sizes: Sizes, seed: int) -> dict[str, Any]:
    fleet = synthetic_fleet(sizes.large_nodes, seed)
    jobs = synthetic_jobs(sizes.jobs, seed + 1)
    large, small, ensemble_nodes = (
        build_index(fleet),
        build_index(fleet[: sizes.small_nodes]),
        build_index(fleet[: sizes.ensemble_nodes]),
    )
    seconds_10k, cpu_10k, placed_10k = best_of(sizes.runs, small, jobs)
    seconds_100k, cpu_100k, placed_100k = best_of(sizes.runs, large, jobs)
    singles = single_latencies(large, jobs[: sizes.single_jobs])
    cpsat, ensemble_total, status = ensemble_seconds(
        ensemble_nodes, sizes.runs, sizes.ensemble_candidates
    )
    subset = jobs[: sizes.baseline_jobs]
    started = time.perf_counter()
    baseline_placed = baseline_batch(fleet[: sizes.small_nodes], subset)
    baseline_s = time.perf_counter() - started
    per_s_10k = placed_10k / seconds_10k
    baseline_per_s = baseline_placed / baseline_s
    return {
        "placements_per_s_10k": round(per_s_10k),
        "placements_per_s_100k": round(placed_100k / seconds_100k),
        "p50_single_ms_100k": round(percentile(singles, 0.50), 3),
        "p99_single_ms_100k": round(percentile(singles, 0.99), 3),
        "cpsat_ensemble_s": round(cpsat, 4),
        "ensemble_total_s": round(ensemble_total, 4),
        "baseline_placements_per_s_10k": round(baseline_per_s, 1),
        "speedup_10k": round(per_s_10k / baseline_per_s) if baseline_per_s else None,
        "placements_per_s_10k_cpu": round(placed_10k / cpu_10k),
        "placements_per_s_100k_cpu": round(placed_100k / cpu_100k),
        "nodes_small": sizes.small_nodes,
        "nodes_large": sizes.large_nodes,
        "jobs": len(jobs),
        "placed_10k": placed_10k,
        "placed_100k": placed_100k,
        "single_samples": len(singles),
        "cpsat_status": status,
        "baseline_jobs": len(subset),
        "baseline_note": f"baseline timed on {len(subset)} jobs, extrapolated to placements/s",
        "machine": f"{platform.machine()} {platform.node()} python {platform.python_version()}",
    }


ROWS = [
    ("placements/s, 10k jobs onto 10k nodes", "placements_per_s_10k"),
    ("placements/s, 10k jobs onto 100k nodes", "placements_per_s_100k"),
    ("single placement p50 ms (100k nodes)", "p50_single_ms_100k"),
    ("single placement p99 ms (100k nodes)", "p99_single_ms_100k"),
    ("CP-SAT 10-allocation ensemble s", "cpsat_ensemble_s"),
    ("baseline placements/s (10k nodes)", "baseline_placements_per_s_10k"),
    ("speedup over baseline (10k nodes)", "speedup_10k"),
]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer runs and samples (about a minute)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    result = measure(QUICK if args.quick else FULL, args.seed)
    print(f"{'metric':<44}{'value':>14}")
    for label, key in ROWS:
        print(f"{label:<44}{result[key]!s:>14}")
    print(
        f"placed {result['placed_10k']} and {result['placed_100k']} of {result['jobs']} jobs;"
        f" CP-SAT {result['cpsat_status']}; {result['baseline_note']}"
    )
    if args.json:
        print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
