"""The job spec's wasm fields: the executor name and the optional fuel budget."""

from __future__ import annotations

import pytest

from computemesh.models.errors import SpecError
from computemesh.models.validation import job_spec_schema, parse_job_spec

WASM_JOB = {"name": "w", "executor": "wasm", "command": ["main.wasm"]}


def test_wasm_job_with_and_without_fuel() -> None:
    assert parse_job_spec(WASM_JOB).fuel is None
    assert parse_job_spec({**WASM_JOB, "fuel": 1000}).fuel == 1000


def test_fuel_must_be_positive_and_only_for_wasm() -> None:
    with pytest.raises(SpecError, match="fuel"):
        parse_job_spec({**WASM_JOB, "fuel": 0})
    with pytest.raises(SpecError, match="fuel applies to the wasm executor only"):
        parse_job_spec({"name": "p", "command": ["true"], "fuel": 1000})


def test_schema_lists_the_wasm_executor_and_fuel() -> None:
    properties = job_spec_schema()["properties"]
    assert "wasm" in properties["executor"]["enum"]
    assert "fuel" in properties
