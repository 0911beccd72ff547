"""Job spec validation: every invalid spec names the field, the value and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from computemesh.models.errors import SpecError
from computemesh.models.validation import job_spec_schema, parse_job_spec
from computemesh.orchestrator.specfile import load_job_spec

VALID = {"name": "hello", "command": ["echo", "hi"]}


def problems(data: object) -> str:
    with pytest.raises(SpecError) as caught:
        parse_job_spec(data)
    return caught.value.message


def test_minimal_spec_gets_defaults() -> None:
    spec = parse_job_spec(VALID)
    assert spec.executor == "process"
    assert spec.resources.cpu == 1.0
    assert spec.timeout_s == 60.0
    assert spec.replicas == 1


@pytest.mark.parametrize(
    ("change", "field", "value", "why"),
    [
        ({"resources": {"memory_mb": -5}}, "resources.memory_mb", "-5", "greater than or equal"),
        ({"timeout_s": 0}, "timeout_s", "0", "greater than 0"),
        ({"executor": "magic"}, "executor", "'magic'", "Input should be 'process'"),
        ({"name": "bad name!"}, "name", "'bad name!'", "should match pattern"),
        ({"command": []}, "command", "[]", "at least 1 item"),
        ({"replicas": 99}, "replicas", "99", "less than or equal to 16"),
        ({"surprise": 1}, "surprise", "1", "Extra inputs are not permitted"),
        ({"outputs": ["../escape"]}, "outputs", "'../escape'", "inside the work directory"),
        ({"outputs": ["/etc/passwd"]}, "outputs", "'/etc/passwd'", "relative POSIX path"),
        ({"env": {"CMESH_X": "1"}}, "env", "'CMESH_X'", "reserved"),
        (
            {"constraints": {"providers": ["not-a-did"]}},
            "constraints.providers.0",
            "'not-a-did'",
            "should match pattern",
        ),
        (
            {"resources": {"gpu_model": "A100"}},
            "resources",
            "gpu_model",
            "need gpu_count of at least 1",
        ),
    ],
)
def test_invalid_field_is_named_with_value_and_reason(
    change: dict[str, object], field: str, value: str, why: str
) -> None:
    message = problems({**VALID, **change})
    assert field in message
    assert value in message
    assert why in message


def test_input_needs_exactly_one_source() -> None:
    message = problems({**VALID, "inputs": [{"path": "a.txt"}]})
    assert "inputs.0" in message
    assert "exactly one of content, content_b64 or source" in message


def test_input_hash_must_match_content() -> None:
    message = problems({**VALID, "inputs": [{"path": "a", "content": "x", "sha256": "0" * 64}]})
    assert "sha256 does not match" in message


def test_duplicate_input_paths_rejected() -> None:
    inputs = [{"path": "a", "content": "1"}, {"path": "a", "content": "2"}]
    assert "input paths repeat: a" in problems({**VALID, "inputs": inputs})


def test_not_a_mapping() -> None:
    assert "must be a mapping" in problems(["echo"])


def test_schema_is_published_and_describes_fields() -> None:
    schema = job_spec_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert {"name", "command", "resources", "constraints", "timeout_s", "replicas"} <= set(
        schema["properties"]
    )
    assert "command" in schema["required"]


def test_spec_file_inputs_are_resolved_and_content_addressed(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("payload")
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(
        "name: t\ncommand: [cat, data.txt]\ninputs:\n  - path: data.txt\n    source: data.txt\n"
    )
    spec = load_job_spec(spec_file)
    assert spec.is_resolved()
    (item,) = spec.inputs
    assert item.source is None
    assert item.inline_bytes() == b"payload"
    assert item.sha256 == "239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5"


def test_spec_file_errors_are_clear(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SpecError, match="does not parse"):
        load_job_spec(broken)
    missing_source = tmp_path / "job.json"
    missing_source.write_text(
        json.dumps({**VALID, "inputs": [{"path": "x", "source": "nowhere.txt"}]})
    )
    with pytest.raises(SpecError, match=r"cannot read nowhere\.txt"):
        load_job_spec(missing_source)
    with pytest.raises(SpecError, match="cannot read job spec"):
        load_job_spec(tmp_path / "absent.yaml")


def test_every_example_is_a_valid_spec() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    specs = sorted(examples.glob("*.yaml"))
    assert len(specs) >= 5
    for path in specs:
        assert load_job_spec(path).is_resolved()


STDIN_JOB = {**VALID, "inputs": [{"path": "in.txt", "content": "a\nb\n"}], "stdin": "in.txt"}


def test_stdin_names_one_of_the_inputs_and_is_in_the_schema() -> None:
    assert parse_job_spec(STDIN_JOB).stdin == "in.txt"
    assert parse_job_spec({**STDIN_JOB, "executor": "wasm"}).stdin == "in.txt"
    assert "standard input" in job_spec_schema()["properties"]["stdin"]["description"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"stdin": "other.txt"}, "is not one of the job's input paths"),
        ({"stdin": "../in.txt"}, "is not one of the job's input paths"),
        ({"executor": "onnx"}, "stdin applies to the process and wasm executors only"),
        ({"stdin": 3}, "stdin"),
    ],
)
def test_bad_stdin_is_refused(change: dict[str, object], problem: str) -> None:
    assert problem in problems({**STDIN_JOB, **change})
