"""The zk policy: ezkl proofs of ONNX inference, made by nodes and checked by consumers."""

from __future__ import annotations

import base64
import hashlib
import io
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from computemesh.actor import Actor
from computemesh.executor import ExecutionRequest
from computemesh.identity import Identity
from computemesh.models.errors import SpecError
from computemesh.models.job import JobSpec
from computemesh.models.market import Hardware, JobResult, OutputFile, ResourceUsage
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.orchestrator.verify_flow import VerificationFlow, VerificationSettings
from computemesh.store import AllocationRepository, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from computemesh.verification import ReputationBook
from computemesh.verification.zk import (
    ENV_SRS_DIR,
    MAX_PARAMETERS,
    PROOF_OUTPUT,
    ZkKeys,
    ZkRefused,
    attach_proof,
    check_result_proof,
    load_ezkl,
    zk_available,
    zk_job_of,
)
from tests.fakes import FakeExecutor

pytestmark = pytest.mark.skipif(
    not zk_available(), reason="ezkl is not importable: install computemesh[zk]"
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "onnx"
FAST = OrchestratorSettings(bid_window_s=0.3, placement_timeout_s=1.0, fetch_interval_s=0.5)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)


def mlp_job(model: bytes | None = None, policy: str = "zk") -> JobSpec:
    """The example 4-8-2 MLP on the example x.npy, under ``policy``."""
    data = {
        "name": "mlp",
        "executor": "onnx",
        "command": ["mlp.onnx", "x.npy"],
        "inputs": [
            {"path": "mlp.onnx", "content_b64": _b64(model or _example("mlp.onnx"))},
            {"path": "x.npy", "content_b64": _b64(_example("x.npy"))},
        ],
        "outputs": ["y.npy", PROOF_OUTPUT],
        "verification": {"policy": policy},
        "timeout_s": 120,
    }
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


def run_model(request: ExecutionRequest) -> tuple[int, bytes, dict[str, bytes]]:
    """What an honest onnx executor returns: the model run by onnxruntime on the feed."""
    files = {path: content for path, content, _ in request.inputs}
    buffer = io.BytesIO()
    np.save(buffer, infer(files), allow_pickle=False)
    return 0, b"{}", {"y.npy": buffer.getvalue()}


def infer(files: dict[str, bytes]) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(files["mlp.onnx"])
    x = np.load(io.BytesIO(files["x.npy"]), allow_pickle=False)
    (y,) = session.run(None, {"x": x})
    return np.asarray(y)


def completed(spec: JobSpec, y: np.ndarray) -> JobResult:
    buffer = io.BytesIO()
    np.save(buffer, y.astype(np.float32), allow_pickle=False)
    data = buffer.getvalue()
    return JobResult(
        contract_id="c" * 32,
        job_id="a" * 32,
        provider="did:key:z6MkTest",
        status="completed",
        exit_code=0,
        stdout="",
        stderr="",
        outputs=[
            OutputFile(
                path="y.npy",
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                content_b64=_b64(data),
            )
        ],
        usage=ResourceUsage(wall_s=0.1, cpu_s=0.1, max_rss_kb=1),
        finished_at_ms=1,
    )


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One keys root and reference strings for the module: setting up costs seconds."""
    root = tmp_path_factory.mktemp("zk")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_SRS_DIR, str(root / "srs"))
        yield root


@pytest.fixture(scope="module")
def proven(shared: Path) -> tuple[ZkKeys, JobSpec, JobResult]:
    """A node's keys and the example job's result with its proof attached."""
    keys = ZkKeys(shared / "keys")
    spec = mlp_job()
    y = infer({item.path: item.inline_bytes() or b"" for item in spec.inputs})
    return keys, spec, attach_proof(keys, spec, completed(spec, y))


def test_keys_are_set_up_once_and_reused(proven: tuple[ZkKeys, JobSpec, JobResult]) -> None:
    keys, spec, _ = proven
    circuit = keys.circuit(zk_job_of(spec))
    made = {path: path.stat().st_mtime_ns for path in (circuit.vk_path, circuit.pk_path)}
    srs = keys.srs(circuit.logrows)
    srs_made = srs.stat().st_mtime_ns

    again = ZkKeys(keys.root)
    circuit_again = again.circuit(zk_job_of(spec))
    again.setup(circuit_again, proving=True)

    assert circuit_again.directory == circuit.directory
    assert circuit_again.digest == circuit.digest
    assert {path: path.stat().st_mtime_ns for path in made} == made
    assert again.srs(circuit.logrows) == srs and srs.stat().st_mtime_ns == srs_made
    assert circuit.directory.parent.name == zk_job_of(spec).model_sha256
    assert 1 <= circuit.logrows <= 17


def test_a_correct_proof_verifies_on_a_consumer_with_its_own_key(
    proven: tuple[ZkKeys, JobSpec, JobResult], shared: Path
) -> None:
    _, spec, result = proven
    consumer = ZkKeys(shared / "consumer")
    check = check_result_proof(consumer, spec, result)
    assert check.standing == "proven", check.reason
    circuit = consumer.circuit(zk_job_of(spec))
    assert circuit.vk_path.exists() and not circuit.pk_path.exists()


def test_a_tampered_output_fails_verification(
    proven: tuple[ZkKeys, JobSpec, JobResult], shared: Path
) -> None:
    keys, spec, result = proven
    y = _output(result, "y.npy")
    y[1, 0] += 0.05  # 400 quantisation steps at scale 13
    tampered = completed(spec, y).model_copy(
        update={"outputs": [*completed(spec, y).outputs, _proof_of(result)]}
    )
    check = check_result_proof(keys, spec, tampered)
    assert check.standing == "refuted"
    assert "output 'y' is not the output the proof proves" in check.reason


def test_a_proof_of_other_inputs_or_a_broken_proof_is_refuted(
    proven: tuple[ZkKeys, JobSpec, JobResult],
) -> None:
    keys, spec, result = proven
    other = spec.model_copy(
        update={"inputs": [spec.inputs[0], _npy_input("x.npy", np.ones((3, 4), np.float32))]}
    )
    assert check_result_proof(keys, other, result).reason.startswith("the proof is of other inputs")

    proof = base64.b64decode(_proof_of(result).content_b64 or "")
    broken = proof.replace(b'"proof": [', b'"proof": [1, ', 1)
    assert broken != proof
    bad = result.model_copy(
        update={"outputs": [*result.outputs[:-1], _output_file(PROOF_OUTPUT, broken)]}
    )
    check = check_result_proof(keys, spec, bad)
    assert check.standing == "refuted" and "does not verify" in check.reason


def test_a_result_without_a_proof_is_unproven_not_refuted(
    proven: tuple[ZkKeys, JobSpec, JobResult],
) -> None:
    keys, spec, result = proven
    bare = result.model_copy(update={"outputs": result.outputs[:-1]})
    assert check_result_proof(keys, spec, bare).standing == "unproven"


def test_a_model_with_too_many_parameters_is_refused(shared: Path) -> None:
    size = int(np.sqrt(MAX_PARAMETERS)) + 1
    with pytest.raises(ZkRefused, match=f"parameters; zk proves at most {MAX_PARAMETERS}"):
        zk_job_of(mlp_job(_square_model(size)))


def test_a_circuit_past_the_row_bound_is_refused(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import computemesh.verification.zk as zk

    monkeypatch.setattr(zk, "MAX_LOGROWS", 10)
    with pytest.raises(ZkRefused, match="2\\^10"):
        ZkKeys(shared / "small").circuit(zk_job_of(mlp_job()))


def test_without_ezkl_the_policy_is_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ezkl", None)
    with pytest.raises(SpecError, match="needs ezkl") as caught:
        load_ezkl()
    assert caught.value.code == "zk_unavailable" and "computemesh[zk]" in str(caught.value)


def test_a_zk_job_must_ask_for_the_proof() -> None:
    with pytest.raises(ValueError, match=r"must list zk/proof\.json"):
        JobSpec.model_validate(
            {
                "name": "mlp",
                "executor": "onnx",
                "command": ["mlp.onnx"],
                "outputs": ["y.npy"],
                "verification": {"policy": "zk"},
            }
        )


# On the in-memory mesh ------------------------------------------------------------------


@pytest.fixture
async def mesh(
    shared: Path, proven: tuple[ZkKeys, JobSpec, JobResult], tmp_path: Path
) -> AsyncIterator[Any]:
    """Nodes (the first one faulty) whose key cache is the module's, and a consumer."""
    started: list[tuple[Orchestrator, list[ProviderNode]]] = []

    async def build(faults: list[str | None]) -> tuple[Orchestrator, list[ProviderNode]]:
        hub = MemoryHub()
        nodes = []
        for index, fault in enumerate(faults):
            home = tmp_path / f"n{index}"
            (home / "cache").mkdir(parents=True)
            (home / "cache" / "zk").symlink_to(shared / "keys")
            nodes.append(
                ProviderNode(
                    actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
                    settings=NodeSettings(
                        home=home, price_per_cpu_hour=0.1 * (index + 1), fault=fault
                    ),
                    hardware=HARDWARE,
                    allocations=AllocationRepository(open_database("sqlite://")),
                    executors={"onnx": FakeExecutor(behaviour=run_model, name="onnx")},
                )
            )
        for node in nodes:
            await node.start()
        jobs = JobRepository(open_database("sqlite://"))
        identity = Identity.generate()
        flow = VerificationFlow(
            judge=identity,
            reputation=ReputationBook(jobs.reputation),
            fraud=jobs.fraud,
            settings=VerificationSettings(seed="zk"),
            zk_dir=shared / "consumer",
        )
        orchestrator = Orchestrator(
            actor=Actor(identity=identity, transport=MemoryTransport(hub)),
            jobs=jobs,
            settings=FAST,
            verification=flow,
        )
        await orchestrator.start()
        await orchestrator.discover(window_s=0.2)
        started.append((orchestrator, nodes))
        return orchestrator, nodes

    yield build
    for orchestrator, nodes in started:
        await orchestrator.stop()
        for node in nodes:
            await node.stop()


async def test_mesh_accepts_a_proven_result_and_convicts_a_wrong_node(mesh: Any) -> None:
    orchestrator, nodes = await mesh(["wrong", None])
    liar, honest = nodes[0].did, nodes[1].did
    record = await orchestrator.run(mlp_job(), timeout=240)

    assert record.status == "completed" and record.verified is True, record.reason
    providers = [doc["body"]["provider"] for doc in record.results]
    assert providers == [liar, honest]
    (finding,) = orchestrator.jobs.fraud.for_job(record.job_id)
    assert finding["provider"] == liar
    assert "zk proof refuted" in finding["verdict"]["body"]["reason"]
    assert orchestrator.verification.reputation_of(liar) == 0.0
    body = JobResult.model_validate(record.results[1]["body"])
    assert {item.path for item in body.outputs} == {"y.npy", PROOF_OUTPUT}
    assert np.allclose(_output(body, "y.npy"), _expected_y(), atol=1e-5)


async def test_mesh_refuses_a_model_too_large_to_prove(mesh: Any) -> None:
    orchestrator, _ = await mesh([None])
    size = int(np.sqrt(MAX_PARAMETERS)) + 1
    job_id = orchestrator.submit(mlp_job(_square_model(size)))
    with pytest.raises(SpecError, match="zk proves at most"):
        await orchestrator.place(job_id)


# Helpers --------------------------------------------------------------------------------


def _example(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _expected_y() -> np.ndarray:
    return infer({item.path: item.inline_bytes() or b"" for item in mlp_job().inputs})


def _output(result: JobResult, path: str) -> np.ndarray:
    item = next(item for item in result.outputs if item.path == path)
    data = base64.b64decode(item.content_b64 or "")
    return np.array(np.load(io.BytesIO(data), allow_pickle=False))


def _proof_of(result: JobResult) -> OutputFile:
    return next(item for item in result.outputs if item.path == PROOF_OUTPUT)


def _output_file(path: str, data: bytes) -> OutputFile:
    return OutputFile(
        path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data), content_b64=_b64(data)
    )


def _npy_input(path: str, value: np.ndarray) -> Any:
    from computemesh.models.job import InputFile

    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    item = InputFile(path=path, content_b64=_b64(buffer.getvalue()))
    return resolve_inputs(JobSpec(name="x", command=["true"], inputs=[item]), Path(".")).inputs[0]


def _square_model(size: int) -> bytes:
    """A model named like the MLP (input x: batch x 4) with a size x size weight matrix."""
    weights = [
        numpy_helper.from_array(np.zeros((4, size), np.float32), "w1"),
        numpy_helper.from_array(np.zeros((size, size), np.float32), "w2"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("MatMul", ["h", "w2"], ["y"]),
        ],
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", size])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())
