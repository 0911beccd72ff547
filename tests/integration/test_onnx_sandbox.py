"""ONNX models run with onnxruntime inside the real bubblewrap sandbox."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from computemesh.executor import (
    ExecutionRequest,
    ExecutionResult,
    ModelCache,
    OnnxExecutor,
    SandboxLimits,
    bubblewrap_available,
    run_to_completion,
)
from computemesh.executor.onnx import python_runtime_for_onnx
from computemesh.executor.python_runtime import RUNTIME_SITE_DIR
from computemesh.models.errors import ExecutionError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not bubblewrap_available(), reason="bubblewrap (bwrap) is not installed"),
    pytest.mark.timeout(120),
]

LIMITS = SandboxLimits(wall_time_s=30, cpu_time_s=30, memory_mb=512, max_processes=32)
RNG = np.random.default_rng(7)
W1 = RNG.standard_normal((4, 8)).astype(np.float32)
B1 = RNG.standard_normal(8).astype(np.float32)
W2 = RNG.standard_normal((8, 2)).astype(np.float32)
B2 = RNG.standard_normal(2).astype(np.float32)


def mlp_model() -> bytes:
    """A 4-8-2 MLP with fixed weights: ``y = relu(x @ W1 + B1) @ W2 + B2``."""
    weights = [numpy_helper.from_array(a, n) for a, n in ((W1, "w1"), (B1, "b1"), (W2, "w2"))]
    weights.append(numpy_helper.from_array(B2, "b2"))
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def expected(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.maximum(x @ W1 + B1, 0) @ W2 + B2)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def job(
    command: list[str], inputs: dict[str, bytes], outputs: list[str] | None = None
) -> ExecutionRequest:
    return ExecutionRequest(
        job_id=f"onnx-{secrets.token_hex(4)}",
        command=command,
        env={},
        inputs=[(path, data, False) for path, data in inputs.items()],
        outputs=outputs or [],
        limits=LIMITS,
    )


def tensor(result: ExecutionResult, path: str) -> np.ndarray:
    found = {item.path: item for item in result.outputs}
    data = found[path].data
    assert data is not None
    return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))


@pytest.fixture
def work_root(tmp_path: Path) -> Path:
    return tmp_path / "work"


@pytest.fixture
def executor(tmp_path: Path) -> OnnxExecutor:
    cache = ModelCache(tmp_path / "models", max_bytes=1024 * 1024)
    return OnnxExecutor(runtime=python_runtime_for_onnx(), cache=cache)


async def test_mlp_output_equals_numpy(executor: OnnxExecutor, work_root: Path) -> None:
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    request = job(["mlp.onnx", "x.npy"], {"mlp.onnx": mlp_model(), "x.npy": npy(x)}, ["y.npy"])
    result = await run_to_completion(executor, request, work_root)
    assert result.status == "completed", result.stderr
    assert json.loads(result.stdout) == {
        "model": "mlp.onnx",
        "outputs": [{"name": "y", "file": "y.npy", "dtype": "float32", "shape": [5, 2]}],
    }
    np.testing.assert_allclose(tensor(result, "y.npy"), expected(x), rtol=1e-5, atol=1e-5)


async def test_json_input_is_fed_as_the_declared_type(
    executor: OnnxExecutor, work_root: Path
) -> None:
    rows = [[0.5, -1.0, 2.0, 3.0], [1, 2, 3, 4]]
    inputs = {"mlp.onnx": mlp_model(), "x.json": json.dumps(rows).encode()}
    result = await run_to_completion(
        executor, job(["mlp.onnx", "x=x.json"], inputs, ["y.npy"]), work_root
    )
    assert result.status == "completed", result.stderr
    reference = expected(np.array(rows, dtype=np.float32))
    np.testing.assert_allclose(tensor(result, "y.npy"), reference, rtol=1e-5, atol=1e-5)


def graph_with_undefined_input() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["nowhere"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.mark.parametrize("model", [b"not an onnx model at all", graph_with_undefined_input()])
async def test_an_invalid_model_is_refused_before_the_job_runs(
    executor: OnnxExecutor, work_root: Path, model: bytes
) -> None:
    request = job(["m.onnx", "x.npy"], {"m.onnx": model, "x.npy": npy(np.zeros(1, np.float32))})
    with pytest.raises(ExecutionError) as caught:
        await run_to_completion(executor, request, work_root)
    assert caught.value.code == "invalid_model"
    assert caught.value.message.startswith("not a valid ONNX model: ")
    assert len(executor.cache) == 0
    assert list(work_root.iterdir()) == []


async def test_a_second_run_of_a_model_hits_the_cache(
    executor: OnnxExecutor, work_root: Path
) -> None:
    inputs = {"mlp.onnx": mlp_model(), "x.npy": npy(np.ones((1, 4), np.float32))}
    for _ in range(2):
        result = await run_to_completion(executor, job(["mlp.onnx", "x.npy"], inputs), work_root)
        assert result.status == "completed", result.stderr
    stats = executor.cache.stats
    assert (stats.misses, stats.hits, len(executor.cache)) == (1, 1, 1)


async def test_an_input_larger_than_declared_is_refused(
    executor: OnnxExecutor, work_root: Path
) -> None:
    wide = npy(np.zeros((2, 5), np.float32))
    request = job(["mlp.onnx", "x.npy"], {"mlp.onnx": mlp_model(), "x.npy": wide})
    with pytest.raises(ExecutionError) as caught:
        await run_to_completion(executor, request, work_root)
    assert caught.value.code == "invalid_input"
    assert "dimension 1 is 5, larger than the 4 the model declares" in caught.value.message


async def test_a_real_model_shipped_with_onnxruntime_runs(
    executor: OnnxExecutor, work_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``logreg_iris.onnx``: a trained scikit-learn classifier inside the onnxruntime wheel."""
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime  # type: ignore[import-untyped]
    from onnxruntime.datasets import get_example  # type: ignore[import-untyped]

    model = Path(get_example("logreg_iris.onnx")).read_bytes()
    flowers = [[5.1, 3.5], [6.4, 3.2], [6.3, 2.5]]
    inputs = {"iris.onnx": model, "x.json": json.dumps(flowers).encode()}
    result = await run_to_completion(
        executor, job(["iris.onnx", "x.json"], inputs, ["label.npy"]), work_root
    )
    assert result.status == "completed", result.stderr
    summary = json.loads(result.stdout)
    assert [item["name"] for item in summary["outputs"]] == ["label"]
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    direct = session.run(["label"], {"float_input": np.array(flowers, dtype=np.float32)})[0]
    np.testing.assert_array_equal(tensor(result, "label.npy"), direct)


async def test_the_runtime_is_read_only_and_the_host_stays_out_of_reach(
    executor: OnnxExecutor, work_root: Path
) -> None:
    """A job on the same sandbox and binds as the runner imports onnxruntime, and no more."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    host_site = executor.runtime.import_paths(sandboxed=False)[0]
    code = f"""
import os, socket, sys
sys.path.insert(0, {RUNTIME_SITE_DIR!r})
import numpy, onnxruntime
print('imported', onnxruntime.__version__)
for target in [{RUNTIME_SITE_DIR + "/numpy/pwned.py"!r}, {RUNTIME_SITE_DIR + "/pwned.py"!r}]:
    try:
        open(target, 'w').write('x')
        print('WROTE', target)
    except OSError as exc:
        print('refused', exc.errno)
print('interfaces', [name for _, name in socket.if_nameindex()])
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()
    print('CONNECTED')
except OSError as exc:
    print('blocked', exc.errno)
print('host site visible', os.path.exists({host_site!r}), os.path.exists('/root'))
"""
    request = job([executor.runtime.interpreter, "-I", "-c", code], {})
    try:
        result = await run_to_completion(executor.process, request, work_root)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    out = result.stdout.decode()
    assert result.status == "completed", result.stderr
    assert "imported" in out and "WROTE" not in out and "CONNECTED" not in out
    assert out.count("refused 30") == 2
    assert "interfaces ['lo']" in out
    assert "host site visible False False" in out
    assert not os.path.exists(f"{host_site}/numpy/pwned.py")


@pytest.fixture
def reachable_root() -> Iterator[Path]:
    """A work root every uid can traverse: without a sandbox nothing stages the work dir."""
    root = Path(tempfile.mkdtemp(dir="/tmp"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def test_without_a_sandbox_the_host_packages_are_used(
    tmp_path: Path, reachable_root: Path
) -> None:
    executor = OnnxExecutor(
        runtime=python_runtime_for_onnx(), cache=ModelCache(tmp_path / "models"), sandbox=False
    )
    assert executor.process.bwrap is None
    x = np.ones((2, 4), np.float32)
    inputs = {"mlp.onnx": mlp_model(), "x.npy": npy(x)}
    result = await run_to_completion(
        executor, job(["mlp.onnx", "x.npy"], inputs, ["y.npy"]), reachable_root
    )
    assert result.status == "completed", result.stderr
    np.testing.assert_allclose(tensor(result, "y.npy"), expected(x), rtol=1e-5, atol=1e-5)


async def test_the_nodes_own_interpreter_is_bound_at_its_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a node that does not run as root: jobs keep its uid and can read its python."""
    monkeypatch.setattr("computemesh.executor.process.can_switch_uid", lambda: False)
    runtime = python_runtime_for_onnx(switch_uid=False)
    if not runtime.interpreter_binds:
        pytest.skip("this node's interpreter lies under /usr; nothing to bind")
    executor = OnnxExecutor(runtime=runtime, cache=ModelCache(tmp_path / "models"))
    x = np.full((1, 4), 0.5, np.float32)
    inputs = {"mlp.onnx": mlp_model(), "x.npy": npy(x)}
    result = await run_to_completion(
        executor, job(["mlp.onnx", "x.npy"], inputs, ["y.npy"]), tmp_path / "work"
    )
    assert result.status == "completed", result.stderr
    np.testing.assert_allclose(tensor(result, "y.npy"), expected(x), rtol=1e-5, atol=1e-5)
