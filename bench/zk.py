"""Zero-knowledge proofs of the example MLP: setup, prove and verify times, key and proof sizes.

Runs the real ``verification.zk`` code on ``examples/onnx/mlp.onnx`` fed ``x.npy`` (a 4-8-2
MLP on a batch of 3), in a fresh directory:

    circuit      settings, calibration and compilation (once per model and fed shapes)
    srs          a local KZG reference string of the size the circuit needs (once per size)
    setup        proving and verification keys (once per circuit: the provider's cost)
    consumer     the consumer's own circuit and verification key from the same model
    prove        one proof (per job)
    verify       checking it and binding the outputs (per result)

    python bench/zk.py [--quick] [--json]

``--quick`` proves and verifies once; otherwise each is repeated and the median kept.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from computemesh.models.job import JobSpec
from computemesh.models.market import JobResult, OutputFile, ResourceUsage
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.verification.zk import (
    ENV_SRS_DIR,
    PROOF_OUTPUT,
    ZkKeys,
    attach_proof,
    check_result_proof,
    zk_job_of,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "onnx"
T = TypeVar("T")


def timed(step: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    value = step()
    return value, time.perf_counter() - started


def example_job() -> JobSpec:
    data = {
        "name": "mlp",
        "executor": "onnx",
        "command": ["mlp.onnx", "x.npy"],
        "inputs": [
            {"path": "mlp.onnx", "source": "mlp.onnx"},
            {"path": "x.npy", "source": "x.npy"},
        ],
        "outputs": ["y.npy", PROOF_OUTPUT],
        "verification": {"policy": "zk"},
    }
    return resolve_inputs(JobSpec.model_validate(data), EXAMPLES)


def onnxruntime_result(spec: JobSpec) -> JobResult:
    """The result an honest provider returns: onnxruntime's output, unsigned."""
    import onnxruntime  # type: ignore[import-untyped]

    files = {item.path: item.inline_bytes() or b"" for item in spec.inputs}
    session = onnxruntime.InferenceSession(files["mlp.onnx"])
    (y,) = session.run(None, {"x": np.load(io.BytesIO(files["x.npy"]), allow_pickle=False)})
    buffer = io.BytesIO()
    np.save(buffer, y, allow_pickle=False)
    data = buffer.getvalue()
    output = OutputFile(
        path="y.npy",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        content_b64=base64.b64encode(data).decode("ascii"),
    )
    return JobResult(
        contract_id="0" * 32,
        job_id="1" * 32,
        provider="did:key:z6MkBench",
        status="completed",
        exit_code=0,
        stdout="",
        stderr="",
        outputs=[output],
        usage=ResourceUsage(wall_s=0.0, cpu_s=0.0, max_rss_kb=0),
        finished_at_ms=0,
    )


def collect(*, quick: bool) -> dict[str, Any]:
    rounds = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="cmesh-zk-bench-") as name:
        root = Path(name)
        os.environ[ENV_SRS_DIR] = str(root / "srs")
        spec, job = example_job(), zk_job_of(example_job())
        provider, consumer = ZkKeys(root / "provider"), ZkKeys(root / "consumer")
        circuit, circuit_s = timed(lambda: provider.circuit(job))
        _, srs_s = timed(lambda: provider.srs(circuit.logrows))
        _, setup_s = timed(lambda: provider.setup(circuit, proving=True))
        _, reuse_s = timed(lambda: provider.setup(provider.circuit(job), proving=True))
        _, consumer_s = timed(lambda: consumer.setup(consumer.circuit(job), proving=False))
        honest = onnxruntime_result(spec)
        prove_times, verify_times = [], []
        for _ in range(rounds):
            proven, seconds = timed(lambda: attach_proof(provider, spec, honest))
            prove_times.append(seconds)
            check, seconds = timed(lambda p=proven: check_result_proof(consumer, spec, p))
            verify_times.append(seconds)
            if check.standing != "proven":
                raise SystemExit(f"the proof did not verify: {check.reason}")
        proof = next(item for item in proven.outputs if item.path == PROOF_OUTPUT)
        inner = json.loads(base64.b64decode(proof.content_b64 or ""))["proof"]
        return {
            "model": "examples/onnx/mlp.onnx (4-8-2 MLP, batch 3)",
            "logrows": circuit.logrows,
            "rows_used": circuit.settings.get("num_rows"),
            "scale": circuit.settings["run_args"]["input_scale"],
            "circuit_s": round(circuit_s, 3),
            "srs_s": round(srs_s, 3),
            "setup_s": round(setup_s, 3),
            "setup_reused_s": round(reuse_s, 4),
            "consumer_setup_s": round(consumer_s, 3),
            "prove_s": round(statistics.median(prove_times), 3),
            "verify_s": round(statistics.median(verify_times), 4),
            "proving_key_bytes": circuit.pk_path.stat().st_size,
            "verification_key_bytes": circuit.vk_path.stat().st_size,
            "srs_bytes": provider.srs(circuit.logrows).stat().st_size,
            "proof_file_bytes": proof.size,
            "proof_bytes": len(bytes.fromhex(inner["hex_proof"].removeprefix("0x"))),
            "rounds": rounds,
            "machine": f"{platform.machine()} {os.cpu_count()} cpus python "
            f"{platform.python_version()}",
        }


def print_table(result: dict[str, Any]) -> None:
    for key, value in result.items():
        print(f"{key:24} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="prove and verify once")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    result = collect(quick=args.quick)
    print_table(result)
    if args.json:
        print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
