"""The runner program on its own (in this process, no sandbox): inspect, run, and failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from computemesh.executor import onnx_runner
from computemesh.executor.onnx_signature import ModelSignature


def add_one_model() -> bytes:
    """``y = x + 1`` and ``n = argmax(x)`` for x: float32 [N, 3]."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "one"], ["y"]),
            helper.make_node("ArgMax", ["x"], ["n"], axis=1, keepdims=0),
        ],
        "add_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("n", TensorProto.INT64, ["N"]),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.onnx").write_bytes(add_one_model())
    return tmp_path


def plan(**fields: object) -> str:
    return json.dumps({"path": [], "model": "m.onnx", "threads": 1, **fields})


def test_inspect_prints_the_signature(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert onnx_runner.main(["inspect", plan()]) == 0
    signature = ModelSignature.from_json(capsys.readouterr().out.encode())
    assert [(v.name, v.dtype, v.shape) for v in signature.inputs] == [("x", "float32", (None, 3))]
    assert [(v.name, v.dtype) for v in signature.outputs] == [("y", "float32"), ("n", "int64")]


def test_inspect_rejects_what_is_not_onnx(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "m.onnx").write_bytes(b"definitely not a model")
    assert onnx_runner.main(["inspect", plan()]) == onnx_runner.EXIT_INVALID_MODEL
    assert "ValidationError" in json.loads(capsys.readouterr().out)["error"]


def test_run_feeds_npy_and_json_and_saves_outputs(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.array([[1, 5, 2], [7, 0, 1]], dtype=np.float32)
    np.save(work / "x.npy", x)
    outputs = {"y": "y.npy", "n": "n.npy"}
    assert onnx_runner.main(["run", plan(inputs={"x": "x.npy"}, outputs=outputs)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "model": "m.onnx",
        "outputs": [
            {"name": "y", "file": "y.npy", "dtype": "float32", "shape": [2, 3]},
            {"name": "n", "file": "n.npy", "dtype": "int64", "shape": [2]},
        ],
    }
    np.testing.assert_array_equal(np.load(work / "y.npy"), x + 1)
    np.testing.assert_array_equal(np.load(work / "n.npy"), [1, 0])
    (work / "x.json").write_text("[[1, 2, 3]]")
    assert onnx_runner.main(["run", plan(inputs={"x": "x.json"}, outputs={"y": "y.npy"})]) == 0
    assert np.load(work / "y.npy").dtype == np.float32


def test_a_run_the_model_refuses_exits_4(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(work / "x.npy", np.zeros((2, 5), dtype=np.float32))
    code = onnx_runner.main(["run", plan(inputs={"x": "x.npy"}, outputs={"y": "y.npy"})])
    assert code == onnx_runner.EXIT_BAD_RUN
    assert "onnx run failed" in capsys.readouterr().err
    assert not (work / "y.npy").exists()


def test_usage_errors_exit_2(work: Path) -> None:
    assert onnx_runner.main(["explode", plan()]) == 2
    assert onnx_runner.main(["run"]) == 2
