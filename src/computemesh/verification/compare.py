"""Whether two replicas of a job gave the same answer.

Deterministic executors (``process``, ``wasm``) must agree exactly: status, exit code, every
output's sha256, and for ``wasm`` the fuel used. Float tensors (``.npy`` outputs of ``onnx``
jobs) may differ within the job's declared tolerance; every other output must still match
byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from computemesh.models.job import Tolerance
from computemesh.models.market import JobResult

TENSOR_SUFFIX = ".npy"


@dataclass(frozen=True)
class Answer:
    """One replica's result, reduced to what replicas are compared on."""

    provider: str
    status: str
    exit_code: int | None
    outputs: tuple[tuple[str, str], ...]
    fuel: int | None = None
    tensors: Mapping[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    @property
    def complete(self) -> bool:
        """The program ran to an exit: its answer can be compared (a lost node's cannot)."""
        return self.exit_code is not None


def answer_of(result: JobResult) -> Answer:
    """The comparable part of a verified result; ``.npy`` bytes kept for tolerance checks."""
    tensors = {
        item.path: _decoded(item.content_b64)
        for item in result.outputs
        if item.path.endswith(TENSOR_SUFFIX) and item.content_b64 is not None
    }
    return Answer(
        provider=result.provider,
        status=result.status,
        exit_code=result.exit_code,
        outputs=tuple(sorted((item.path, item.sha256) for item in result.outputs)),
        fuel=result.usage.fuel,
        tensors={path: data for path, data in tensors.items() if data is not None},
    )


def answers_agree(first: Answer, second: Answer, *, executor: str, tolerance: Tolerance) -> bool:
    """True when ``first`` and ``second`` are the same answer for a job of ``executor``."""
    if (first.status, first.exit_code) != (second.status, second.exit_code):
        return False
    if executor == "wasm" and first.fuel != second.fuel:
        return False
    if first.outputs == second.outputs:
        return True
    if executor != "onnx" or (tolerance.abs == 0 and tolerance.rel == 0):
        return False
    return _outputs_within_tolerance(first, second, tolerance)


def group_answers(
    answers: Sequence[Answer], *, executor: str, tolerance: Tolerance
) -> list[list[int]]:
    """Indices of ``answers`` grouped by agreement, largest group first (ties: earliest).

    Each answer joins the first group whose first member it agrees with, so with a tolerance
    the grouping is decided by each group's first answer.
    """
    groups: list[list[int]] = []
    for index, answer in enumerate(answers):
        for group in groups:
            if answers_agree(answers[group[0]], answer, executor=executor, tolerance=tolerance):
                group.append(index)
                break
        else:
            groups.append([index])
    return sorted(groups, key=lambda group: (-len(group), group[0]))


def _outputs_within_tolerance(first: Answer, second: Answer, tolerance: Tolerance) -> bool:
    paths = [path for path, _ in first.outputs]
    if paths != [path for path, _ in second.outputs]:
        return False
    hashes = dict(second.outputs)
    for path, digest in first.outputs:
        if hashes[path] == digest:
            continue
        if not path.endswith(TENSOR_SUFFIX):
            return False
        if not _tensors_close(first.tensors.get(path), second.tensors.get(path), tolerance):
            return False
    return True


def _tensors_close(first: bytes | None, second: bytes | None, tolerance: Tolerance) -> bool:
    """Both tensors present, same shape and kind, every value within the tolerance."""
    if first is None or second is None:
        return False
    left, right = _load_tensor(first), _load_tensor(second)
    if left is None or right is None or left.shape != right.shape:
        return False
    if left.dtype.kind not in "fiub" or left.dtype.kind != right.dtype.kind:
        return False
    return bool(
        np.allclose(
            left.astype(np.float64),
            right.astype(np.float64),
            rtol=tolerance.rel,
            atol=tolerance.abs,
            equal_nan=False,
        )
    )


def _load_tensor(data: bytes) -> np.ndarray | None:
    """A tensor from ``.npy`` bytes a provider sent, or None when they are not one."""
    try:
        value = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    return value if isinstance(value, np.ndarray) else None


def _decoded(content_b64: str | None) -> bytes | None:
    if content_b64 is None:
        return None
    try:
        return base64.b64decode(content_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
