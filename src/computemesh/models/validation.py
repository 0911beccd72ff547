"""Turning untrusted data into models, with errors that name the field, the value and why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from computemesh.models.ensemble import EnsembleSpec
from computemesh.models.errors import SpecError
from computemesh.models.job import JobSpec

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_SHOWN_VALUE = 80


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per problem: ``field = value: why``."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(spec)"
        value = repr(item.get("input"))
        if len(value) > MAX_SHOWN_VALUE:
            value = value[: MAX_SHOWN_VALUE - 3] + "..."
        reason = item["msg"].removeprefix("Value error, ")
        lines.append(f"{field} = {value}: {reason}")
    return lines


def parse_model(model: type[ModelT], data: object, *, what: str, schema: str = "job") -> ModelT:
    """Validate ``data`` as ``model``; raise SpecError listing every problem, with a hint
    naming the published schema (``cmesh schema <schema>``) that describes the format."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{what} must be a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = describe_validation_error(exc)
        raise SpecError(
            f"{what} is invalid:\n  " + "\n  ".join(problems),
            hint=f"see `cmesh schema {schema}` for the {what} format",
        ) from exc


def parse_job_spec(data: object) -> JobSpec:
    return parse_model(JobSpec, data, what="job spec")


def parse_ensemble_spec(data: object) -> EnsembleSpec:
    return parse_model(EnsembleSpec, data, what="ensemble spec", schema="ensemble")


def published_schema(model: type[BaseModel], name: str) -> dict[str, Any]:
    """``model``'s JSON Schema (draft 2020-12) as published under ``name``."""
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://computemesh.dev/schema/{name}.json"
    return schema


def job_spec_schema() -> dict[str, Any]:
    """The published JSON Schema of the job spec."""
    return published_schema(JobSpec, "job")


def ensemble_spec_schema() -> dict[str, Any]:
    """The published JSON Schema of the ensemble spec (allocations are job specs)."""
    return published_schema(EnsembleSpec, "ensemble")
