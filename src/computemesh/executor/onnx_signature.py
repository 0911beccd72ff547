"""What an ONNX model takes and gives: names, element types and shapes of its values.

The signature comes out of the sandbox (``onnx_runner.py inspect`` prints it as JSON) and
is therefore read as untrusted data: ``ModelSignature.from_json`` checks every field and
bounds every count and length before anything uses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

NUMERIC_DTYPES = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)
"""Element types a tensor input or output may have (numpy names)."""

MAX_VALUES = 256
MAX_RANK = 32
MAX_NAME_LENGTH = 1024
MAX_TYPE_LENGTH = 256
MAX_SIGNATURE_BYTES = 1024 * 1024

Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class ValueSpec:
    """One model input or output.

    ``onnx_type`` is the runtime's type string (``tensor(float)``, ``seq(...)``).
    ``dtype`` is the numpy element type when the value is a numeric tensor, else None
    (strings, sequences, maps). ``shape`` has None for each dimension the model leaves
    open, and is None when the rank itself is unknown.
    """

    name: str
    onnx_type: str
    dtype: str | None
    shape: Shape | None

    def to_data(self) -> dict[str, Any]:
        shape = None if self.shape is None else list(self.shape)
        return {"name": self.name, "type": self.onnx_type, "dtype": self.dtype, "shape": shape}

    @classmethod
    def from_data(cls, data: object) -> ValueSpec:
        """Raises ValueError unless ``data`` is a well-formed, bounded value description."""
        if not isinstance(data, dict):
            raise ValueError("a value must be an object")
        name, onnx_type = data.get("name"), data.get("type")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
            raise ValueError("a value name must be a string of 1 to 1024 characters")
        if not isinstance(onnx_type, str) or len(onnx_type) > MAX_TYPE_LENGTH:
            raise ValueError(f"value {name!r}: bad type")
        dtype = data.get("dtype")
        if dtype is not None and dtype not in NUMERIC_DTYPES:
            raise ValueError(f"value {name!r}: unknown dtype {dtype!r}")
        return cls(name, onnx_type, dtype, _shape(name, data.get("shape")))


@dataclass(frozen=True)
class ModelSignature:
    """The inputs a model must be fed and the outputs it produces, in declared order."""

    inputs: tuple[ValueSpec, ...]
    outputs: tuple[ValueSpec, ...]

    def input(self, name: str) -> ValueSpec | None:
        return next((value for value in self.inputs if value.name == name), None)

    def tensor_outputs(self) -> tuple[ValueSpec, ...]:
        """The outputs that are numeric tensors (the only ones a job gets back)."""
        return tuple(value for value in self.outputs if value.dtype is not None)

    def to_json(self) -> bytes:
        data = {
            "inputs": [value.to_data() for value in self.inputs],
            "outputs": [value.to_data() for value in self.outputs],
        }
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ModelSignature:
        """Parse a signature; raises ValueError naming what is wrong."""
        if len(raw) > MAX_SIGNATURE_BYTES:
            raise ValueError("the signature is too large")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"the signature is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("the signature must be an object")
        inputs = _values(data.get("inputs"), "inputs")
        outputs = _values(data.get("outputs"), "outputs")
        if not outputs:
            raise ValueError("the model has no outputs")
        return cls(inputs, outputs)


def _values(data: object, what: str) -> tuple[ValueSpec, ...]:
    if not isinstance(data, list) or len(data) > MAX_VALUES:
        raise ValueError(f"{what} must be a list of at most {MAX_VALUES} values")
    values = tuple(ValueSpec.from_data(item) for item in data)
    names = [value.name for value in values]
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: names repeat")
    return values


def _shape(name: str, data: object) -> Shape | None:
    if data is None:
        return None
    if not isinstance(data, list) or len(data) > MAX_RANK:
        raise ValueError(f"value {name!r}: shape must be a list of at most {MAX_RANK} dimensions")
    dims: list[int | None] = []
    for dim in data:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 0):
            raise ValueError(f"value {name!r}: a dimension must be a non-negative integer or null")
        dims.append(dim)
    return tuple(dims)
