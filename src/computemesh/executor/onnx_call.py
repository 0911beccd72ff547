"""The command of an ``onnx`` job, and the checks its tensors pass before anything runs.

An ``onnx`` job's ``command`` names files among its inputs:

    command: [MODEL, FEED...]        e.g. [mlp.onnx, x.npy] or [mlp.onnx, "x=x.npy"]

``MODEL`` is the ONNX model. Each ``FEED`` gives one model input a file: ``NAME=PATH``
for the input called NAME, or a bare ``PATH`` for the next input (in the model's
declared order) that no ``NAME=`` feed names. A file is ``.npy`` (a numpy array, no
pickled objects) or ``.json`` (nested lists of numbers, converted to the input's
declared element type). Every model input must be fed exactly once.

Each output tensor is written to ``<name>.npy`` in the work directory, the name with
every character outside ``A-Za-z0-9._-`` replaced by ``_`` (``output_files``); list
those files in the spec's ``outputs`` to get them back.

Before the run, each fed file is described from its bytes alone (the ``.npy`` header
is parsed, never the data; JSON is parsed by the standard library) and compared with
the model's declaration: element type, rank, every fixed dimension. A tensor larger
than declared, or an ``.npy`` file with more data than its own header declares, is
refused, as is anything else that does not fit; ``ExecutionError`` says which input
and why.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from computemesh.executor.onnx_signature import MAX_RANK, ModelSignature, Shape, ValueSpec
from computemesh.executor.workdir import checked_relative_path
from computemesh.models.errors import ExecutionError

TENSOR_SUFFIXES = (".npy", ".json")
JSON_KINDS = {"b": "bool", "i": "integer", "u": "integer", "f": "float"}
ACCEPTED_JSON_KINDS = {"b": {"b"}, "i": {"i", "u"}, "u": {"i", "u"}, "f": {"i", "u", "f"}}
_UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class TensorFile:
    """What a tensor file holds, read from its bytes: a numpy kind or dtype, and a shape.

    ``dtype`` is a numpy dtype name for ``.npy``; for JSON, where numbers carry no width,
    it is None and ``kind`` (numpy's one-letter kind: b, i, u, f) is what is known.
    """

    kind: str
    dtype: str | None
    shape: tuple[int, ...]


def model_path(command: Sequence[str]) -> str:
    """The model's path: the command's first element, a path inside the work directory."""
    if not command:
        raise ExecutionError("an onnx job's command must name its model", code="invalid_command")
    return checked_relative_path(command[0], "model")


def bind_feeds(command: Sequence[str], signature: ModelSignature) -> dict[str, str]:
    """Input name -> file path for every model input, from ``command[1:]``.

    Raises ExecutionError (code "invalid_command") for a feed too many, an input fed
    twice or not at all, or a path that leaves the work directory.
    """
    named: dict[str, str] = {}
    positional: list[str] = []
    for argument in command[1:]:
        name, sep, path = argument.partition("=")
        if sep and signature.input(name) is not None:
            if name in named:
                raise _invalid(f"input {name!r} is fed twice")
            named[name] = checked_relative_path(path, "tensor")
        else:
            positional.append(checked_relative_path(argument, "tensor"))
    open_inputs = [value.name for value in signature.inputs if value.name not in named]
    if len(positional) > len(open_inputs):
        raise _invalid(f"{len(positional) - len(open_inputs)} feed(s) more than the model's inputs")
    named.update(zip(open_inputs, positional, strict=False))
    missing = [value.name for value in signature.inputs if value.name not in named]
    if missing:
        raise _invalid(f"model input(s) not fed: {', '.join(missing)}")
    return named


def output_files(signature: ModelSignature, taken: Sequence[str]) -> dict[str, str]:
    """Output name -> the ``.npy`` file it is written to, for every tensor output.

    Raises ExecutionError (code "invalid_command") when a file would overwrite one of
    ``taken`` (the job's inputs) or another output's file.
    """
    files: dict[str, str] = {}
    used = set(taken)
    for value in signature.tensor_outputs():
        file = output_file_name(value.name)
        if file in used:
            raise _invalid(f"output {value.name!r} would be written to {file}, which is taken")
        used.add(file)
        files[value.name] = file
    return files


def output_file_name(name: str) -> str:
    """``<name>.npy``, unsafe characters replaced: ``gpu_0/softmax`` -> ``gpu_0_softmax.npy``."""
    safe = _UNSAFE_FILE_CHARACTERS.sub("_", name).lstrip(".") or "output"
    return f"{safe[:200]}.npy"


def check_feeds(
    feeds: Mapping[str, str], signature: ModelSignature, files: Mapping[str, bytes]
) -> None:
    """Check every fed file against the input it feeds; raises ExecutionError otherwise.

    Codes: "invalid_command" (the file is not among the job's inputs), "invalid_input"
    (it cannot be read as a tensor, or does not fit the model's declaration).
    """
    for name, path in feeds.items():
        value = signature.input(name)
        assert value is not None, "bind_feeds only binds declared inputs"
        data = files.get(path)
        if data is None:
            raise _invalid(f"input {name!r}: {path} is not among the job's inputs")
        try:
            described = describe_tensor_file(path, data)
            check_fits(described, value)
        except ValueError as exc:
            raise ExecutionError(f"input {name!r} ({path}): {exc}", code="invalid_input") from exc


def describe_tensor_file(path: str, data: bytes) -> TensorFile:
    """Kind, dtype and shape of a ``.npy`` or ``.json`` tensor file; ValueError otherwise."""
    if path.endswith(".npy"):
        return _describe_npy(data)
    if path.endswith(".json"):
        return _describe_json(data)
    raise ValueError(f"a tensor file must end in {' or '.join(TENSOR_SUFFIXES)}")


def check_fits(tensor: TensorFile, value: ValueSpec) -> None:
    """Raise ValueError unless ``tensor`` can feed ``value`` (type, rank, fixed dimensions)."""
    if value.dtype is None:
        raise ValueError(f"the model declares {value.onnx_type}; only numeric tensors are fed")
    _check_type(tensor, value.dtype)
    if value.shape is not None:
        _check_shape(tensor.shape, value.shape)


def _check_type(tensor: TensorFile, declared: str) -> None:
    if tensor.dtype is not None:
        if tensor.dtype != declared:
            raise ValueError(f"holds {tensor.dtype}, the model declares {declared}")
        return
    declared_kind = np.dtype(declared).kind
    if tensor.kind not in ACCEPTED_JSON_KINDS[declared_kind]:
        raise ValueError(f"holds {JSON_KINDS[tensor.kind]} numbers, the model declares {declared}")


def _check_shape(actual: tuple[int, ...], declared: Shape) -> None:
    shown = "(" + ", ".join("?" if d is None else str(d) for d in declared) + ")"
    if len(actual) != len(declared):
        raise ValueError(f"has shape {actual}, the model declares rank {len(declared)} {shown}")
    for axis, (size, expected) in enumerate(zip(actual, declared, strict=True)):
        if expected is None or size == expected:
            continue
        relation = "larger" if size > expected else "smaller"
        raise ValueError(
            f"has shape {actual}: dimension {axis} is {size}, {relation} than the {expected} "
            f"the model declares {shown}"
        )


def _describe_npy(data: bytes) -> TensorFile:
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f".npy format version {version} is not supported")
    except (ValueError, SyntaxError, OSError) as exc:
        raise ValueError(f"not a readable .npy file: {exc}") from exc
    if dtype.hasobject or dtype.kind not in JSON_KINDS:
        raise ValueError(f"holds {dtype}; only bool, integer and float arrays are fed")
    declared_bytes = math.prod(shape) * dtype.itemsize
    present = len(data) - stream.tell()
    if present > declared_bytes:
        raise ValueError(
            f"is larger than its header declares: {present} data bytes for shape {shape} "
            f"of {dtype} ({declared_bytes} bytes)"
        )
    if present < declared_bytes:
        raise ValueError(f"is truncated: {present} of {declared_bytes} data bytes")
    return TensorFile(kind=dtype.kind, dtype=dtype.name, shape=tuple(shape))


def _describe_json(data: bytes) -> TensorFile:
    _check_json_shape(data)
    try:
        array = np.asarray(json.loads(data))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not a JSON array of numbers: {exc}") from exc
    if array.dtype.kind not in JSON_KINDS:
        raise ValueError("must be a number or nested lists of numbers of equal lengths")
    return TensorFile(kind=array.dtype.kind, dtype=None, shape=tuple(array.shape))


def _check_json_shape(data: bytes) -> None:
    """Refuse objects, strings and nesting past ``MAX_RANK`` before any parser sees them.

    A tensor holds numbers and lists only, so every bracket is structure; counting them
    bounds the depth without recursion (``json`` recurses per level, and a process whose
    recursion limit something raised can crash on deep input instead of raising).
    """
    if b'"' in data or b"{" in data:
        raise ValueError("must be a number or nested lists of numbers (no objects or strings)")
    codes = np.frombuffer(data, dtype=np.uint8)
    steps = (codes == ord("[")).astype(np.int64) - (codes == ord("]"))
    if steps.size and int(np.cumsum(steps).max()) > MAX_RANK:
        raise ValueError(f"is nested deeper than {MAX_RANK} levels")


def _invalid(message: str) -> ExecutionError:
    return ExecutionError(message, code="invalid_command")
