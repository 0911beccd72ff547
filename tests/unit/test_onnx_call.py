"""An onnx job's command, its tensor files and the model signature they are checked against."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from computemesh.executor.onnx_call import (
    bind_feeds,
    check_feeds,
    describe_tensor_file,
    model_path,
    output_file_name,
    output_files,
)
from computemesh.executor.onnx_signature import ModelSignature, ValueSpec
from computemesh.models.errors import ExecutionError

SIGNATURE = ModelSignature(
    inputs=(
        ValueSpec("x", "tensor(float)", "float32", (None, 4)),
        ValueSpec("mask", "tensor(bool)", "bool", (4,)),
    ),
    outputs=(
        ValueSpec("y", "tensor(float)", "float32", (None, 2)),
        ValueSpec("gpu_0/prob", "tensor(int64)", "int64", None),
        ValueSpec("probabilities", "seq(map(int64,tensor(float)))", None, None),
    ),
)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


X = npy(np.zeros((3, 4), dtype=np.float32))
MASK = npy(np.ones(4, dtype=bool))


def refusal(feeds: dict[str, str], files: dict[str, bytes]) -> ExecutionError:
    with pytest.raises(ExecutionError) as caught:
        check_feeds(feeds, SIGNATURE, files)
    return caught.value


# The command -------------------------------------------------------------------------------


def test_model_path_is_the_first_element_and_must_stay_inside() -> None:
    assert model_path(["m/model.onnx", "x.npy"]) == "m/model.onnx"
    for command in ([], ["../model.onnx"], ["/etc/passwd"]):
        with pytest.raises(ExecutionError) as caught:
            model_path(command)
        assert caught.value.code in ("invalid_command", "invalid_path")


def test_feeds_bind_by_name_then_in_declared_order() -> None:
    assert bind_feeds(["m.onnx", "a.npy", "b.npy"], SIGNATURE) == {"x": "a.npy", "mask": "b.npy"}
    assert bind_feeds(["m.onnx", "mask=b.npy", "a.npy"], SIGNATURE) == {
        "mask": "b.npy",
        "x": "a.npy",
    }


def test_a_path_with_an_equals_sign_that_names_no_input_is_positional() -> None:
    feeds = bind_feeds(["m.onnx", "run=1.npy", "mask=m.json"], SIGNATURE)
    assert feeds == {"x": "run=1.npy", "mask": "m.json"}


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["m.onnx", "a.npy"], "not fed: mask"),
        (["m.onnx", "a.npy", "b.npy", "c.npy"], "1 feed(s) more"),
        (["m.onnx", "x=a.npy", "x=b.npy", "c.npy"], "fed twice"),
    ],
)
def test_every_input_is_fed_exactly_once(command: list[str], message: str) -> None:
    with pytest.raises(ExecutionError) as caught:
        bind_feeds(command, SIGNATURE)
    assert caught.value.code == "invalid_command"
    assert message in caught.value.message


def test_a_feed_may_not_leave_the_work_directory() -> None:
    with pytest.raises(ExecutionError) as caught:
        bind_feeds(["m.onnx", "x=../a.npy", "b.npy"], SIGNATURE)
    assert caught.value.code == "invalid_path"


def test_outputs_go_to_safe_npy_files_and_never_over_inputs() -> None:
    assert output_file_name("gpu_0/prob") == "gpu_0_prob.npy"
    assert output_file_name("..") == "output.npy"
    assert output_files(SIGNATURE, ["x.npy"]) == {"y": "y.npy", "gpu_0/prob": "gpu_0_prob.npy"}
    with pytest.raises(ExecutionError) as caught:
        output_files(SIGNATURE, ["m.onnx", "y.npy"])
    assert "y.npy" in caught.value.message


# Tensor files -------------------------------------------------------------------------------


def test_fitting_npy_and_json_files_pass() -> None:
    files = {"x.npy": X, "mask.json": b"[true, false, true, true]"}
    check_feeds({"x": "x.npy", "mask": "mask.json"}, SIGNATURE, files)
    files["x.json"] = json.dumps([[1, 2.5, 3, 4]]).encode()
    check_feeds({"x": "x.json", "mask": "mask.json"}, SIGNATURE, files)


def test_a_tensor_larger_than_declared_is_refused() -> None:
    wide = npy(np.zeros((3, 5), dtype=np.float32))
    error = refusal({"x": "x.npy", "mask": "m.npy"}, {"x.npy": wide, "m.npy": MASK})
    assert error.code == "invalid_input"
    assert "dimension 1 is 5, larger than the 4 the model declares (?, 4)" in error.message


def test_an_npy_file_larger_than_its_header_declares_is_refused() -> None:
    padded = X + b"\x00" * 64
    error = refusal({"x": "x.npy", "mask": "m.npy"}, {"x.npy": padded, "m.npy": MASK})
    assert error.code == "invalid_input"
    assert "larger than its header declares" in error.message
    truncated = refusal({"x": "x.npy", "mask": "m.npy"}, {"x.npy": X[:-4], "m.npy": MASK})
    assert "truncated" in truncated.message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (npy(np.zeros((3, 4), dtype=np.float64)), "holds float64, the model declares float32"),
        (npy(np.zeros((4,), dtype=np.float32)), "the model declares rank 2"),
        (b"not numpy", "not a readable .npy file"),
    ],
)
def test_npy_files_that_do_not_fit_are_refused(data: bytes, message: str) -> None:
    error = refusal({"x": "x.npy", "mask": "m.npy"}, {"x.npy": data, "m.npy": MASK})
    assert message in error.message and "input 'x' (x.npy)" in error.message


def test_pickled_object_arrays_are_refused_without_being_loaded() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="only bool, integer and float"):
        describe_tensor_file("x.npy", buffer.getvalue())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[[1, 2, 3, 4], [1, 2]]", "not a JSON array of numbers"),
        (b'[["a", "b", "c", "d"]]', "nested lists of numbers"),
        (b"[[1, 2, 3, null]]", "nested lists of numbers"),
        (b"[[1, 2, 3", "not a JSON array of numbers"),
    ],
)
def test_json_that_is_not_a_rectangular_number_array_is_refused(data: bytes, message: str) -> None:
    error = refusal({"x": "x.json", "mask": "m.npy"}, {"x.json": data, "m.npy": MASK})
    assert message in error.message


def test_json_numbers_must_suit_the_declared_type() -> None:
    error = refusal({"x": "x.npy", "mask": "m.json"}, {"x.npy": X, "m.json": b"[1.5, 0, 1, 0]"})
    assert "holds float numbers, the model declares bool" in error.message


def test_deeply_nested_json_is_refused_before_it_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("computemesh.executor.onnx_call.json.loads", pytest.fail)
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ValueError, match="nested deeper than 32 levels"):
        describe_tensor_file("x.json", deep)
    with pytest.raises(ValueError, match="no objects or strings"):
        describe_tensor_file("x.json", b'[{"a": 1}]')


def test_feeds_must_be_job_inputs_with_a_tensor_suffix() -> None:
    missing = refusal({"x": "x.npy", "mask": "m.npy"}, {"m.npy": MASK})
    assert missing.code == "invalid_command" and "not among the job's inputs" in missing.message
    odd = refusal({"x": "x.txt", "mask": "m.npy"}, {"x.txt": b"1", "m.npy": MASK})
    assert ".npy or .json" in odd.message


def test_non_tensor_inputs_are_refused() -> None:
    signature = ModelSignature(
        inputs=(ValueSpec("s", "tensor(string)", None, (1,)),),
        outputs=(ValueSpec("y", "tensor(float)", "float32", (1,)),),
    )
    with pytest.raises(ExecutionError) as caught:
        check_feeds({"s": "s.json"}, signature, {"s.json": b"[1]"})
    assert "tensor(string); only numeric tensors" in caught.value.message


# The signature ------------------------------------------------------------------------------


def test_signature_round_trips_and_lists_tensor_outputs() -> None:
    again = ModelSignature.from_json(SIGNATURE.to_json())
    assert again == SIGNATURE
    assert [value.name for value in again.tensor_outputs()] == ["y", "gpu_0/prob"]


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"inputs": [], "outputs": []}',
        b'{"inputs": [], "outputs": [{"name": "y", "type": "t", "dtype": "object", "shape": []}]}',
        b'{"inputs": [], "outputs": [{"name": "y", "type": "t", "dtype": null, "shape": [-1]}]}',
        b'{"inputs": [], "outputs": [{"name": "", "type": "t", "dtype": null, "shape": null}]}',
        b'{"inputs": [{"name": "a", "type": "t", "dtype": null, "shape": [true]}], "outputs": []}',
        json.dumps(
            {
                "inputs": [],
                "outputs": [{"name": "y", "type": "t", "dtype": None, "shape": None}] * 2,
            }
        ).encode(),
        json.dumps(
            {"inputs": [{"name": str(i), "type": "t"} for i in range(300)], "outputs": []}
        ).encode(),
    ],
)
def test_malformed_signatures_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        ModelSignature.from_json(data)
