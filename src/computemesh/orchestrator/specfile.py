"""Reading a job spec file (YAML or JSON) and resolving its inputs into content-addressed bytes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import yaml

from computemesh.models.errors import SpecError
from computemesh.models.job import MAX_INLINE_INPUT_BYTES, InputFile, JobSpec, sha256_hex
from computemesh.models.validation import parse_job_spec

MAX_SPEC_FILE_BYTES = 4 * 1024 * 1024


def read_spec_data(path: Path) -> Any:
    """The parsed document in ``path`` (``.json`` as JSON, anything else as YAML)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SpecError(f"cannot read job spec {path}: {exc.strerror}") from exc
    if size > MAX_SPEC_FILE_BYTES:
        raise SpecError(f"job spec {path} is {size} bytes; the limit is {MAX_SPEC_FILE_BYTES}")
    text = path.read_text(encoding="utf-8", errors="strict")
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"job spec {path} does not parse: {exc}") from exc


def resolve_inputs(spec: JobSpec, base_dir: Path) -> JobSpec:
    """Inline every ``source`` input (relative to ``base_dir``) and fill every sha256."""
    return spec.model_copy(
        update={"inputs": [_resolve_input(item, base_dir) for item in spec.inputs]}
    )


def _resolve_input(item: InputFile, base_dir: Path) -> InputFile:
    if item.source is None:
        data = item.inline_bytes() or b""
        return item.model_copy(update={"sha256": sha256_hex(data)})
    source = (base_dir / item.source).resolve()
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise SpecError(f"inputs: cannot read {item.source}: {exc.strerror}") from exc
    if len(data) > MAX_INLINE_INPUT_BYTES:
        raise SpecError(
            f"inputs: {item.source} is {len(data)} bytes; the limit is {MAX_INLINE_INPUT_BYTES}"
        )
    if item.sha256 is not None and item.sha256 != sha256_hex(data):
        raise SpecError(f"inputs: {item.source} does not match its declared sha256")
    return InputFile(
        path=item.path,
        content_b64=base64.b64encode(data).decode("ascii"),
        sha256=sha256_hex(data),
        executable=item.executable,
    )


def load_job_spec(path: Path) -> JobSpec:
    """Read, validate and resolve a spec file; SpecError names the field, value and why."""
    spec = parse_job_spec(read_spec_data(path))
    return resolve_inputs(spec, path.parent)
