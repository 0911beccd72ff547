"""Build the files of the ONNX examples, and check a result against numpy.

    python examples/onnx/build.py            write mlp.onnx, x.npy, x.json, flowers.json
                                             (committed; rebuilding gives the same bytes)
                                             and copy iris.onnx out of onnxruntime
    python examples/onnx/build.py check Y    compare a returned y.npy with numpy

``mlp.onnx`` is a 4-8-2 multilayer perceptron with fixed weights, ``y = relu(x W1 + b1)
W2 + b2``, built with ``onnx.helper``. ``iris.onnx`` is the small scikit-learn logistic
regression on iris (two features) that the onnxruntime wheel ships as an example; it is
copied rather than committed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET = 17

W1 = ((np.arange(32, dtype=np.float32).reshape(4, 8) % 7) - 3) / 4
B1 = np.linspace(-0.5, 0.5, 8, dtype=np.float32)
W2 = ((np.arange(16, dtype=np.float32).reshape(8, 2) % 5) - 2) / 2
B2 = np.array([0.25, -0.25], dtype=np.float32)
X = np.array(
    [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0], [0.25, -0.5, 0.75, -1.0]], dtype=np.float32
)
FLOWERS = [[5.1, 3.5], [6.4, 3.2], [6.3, 2.5]]
"""Sepal length and width (cm) of three iris flowers, for ``iris.onnx``."""


def mlp_model() -> onnx.ModelProto:
    """The 4-8-2 MLP, with a dynamic batch dimension."""
    weights = [
        numpy_helper.from_array(value, name)
        for value, name in ((W1, "w1"), (B1, "b1"), (W2, "w2"), (B2, "b2"))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["y"]),
        ],
        "mlp_4_8_2",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        weights,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="computemesh"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def expected(x: np.ndarray) -> np.ndarray:
    """What the MLP computes, in numpy."""
    return np.asarray(np.maximum(x @ W1 + B1, 0) @ W2 + B2)


def build() -> None:
    (HERE / "mlp.onnx").write_bytes(mlp_model().SerializeToString())
    np.save(HERE / "x.npy", X, allow_pickle=False)
    (HERE / "x.json").write_text(json.dumps(X.tolist()) + "\n")
    (HERE / "flowers.json").write_text(json.dumps(FLOWERS) + "\n")
    from onnxruntime.datasets import get_example  # type: ignore[import-untyped]

    shutil.copyfile(get_example("logreg_iris.onnx"), HERE / "iris.onnx")
    print(f"wrote mlp.onnx, x.npy, x.json, flowers.json, iris.onnx in {HERE}")


def check(path: Path) -> int:
    returned = np.load(path, allow_pickle=False)
    reference = expected(X)
    close = returned.shape == reference.shape and np.allclose(returned, reference, atol=1e-5)
    print(f"returned {returned.tolist()}\nnumpy    {reference.tolist()}\nmatch: {close}")
    return 0 if close else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"] and len(sys.argv) == 3:
        sys.exit(check(Path(sys.argv[2])))
    build()
