"""The `cmesh` command's offline commands: identity, schema, spec errors, jobs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from computemesh.app.consumer import open_jobs
from computemesh.app.home import MeshHome
from computemesh.cli.main import app

runner = CliRunner()
SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
SEED_DID = "did:key:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw"


def cmesh(home: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--home", str(home), *args])
    return result.exit_code, result.output


def test_id_show_creates_key_with_private_mode(tmp_path: Path) -> None:
    code, out = cmesh(tmp_path, "id", "show", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["did"].startswith("did:key:z6Mk")
    key_file = Path(data["key_file"])
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    code, again = cmesh(tmp_path, "id", "show", "--json")
    assert json.loads(again)["did"] == data["did"]


def test_id_import_restores_from_seed_and_export_writes_backup(tmp_path: Path) -> None:
    code, out = cmesh(tmp_path, "id", "import", "--seed-hex", SEED, "--json")
    assert code == 0, out
    assert json.loads(out)["did"] == SEED_DID
    code, out = cmesh(tmp_path, "id", "show", "--json")
    assert json.loads(out)["did"] == SEED_DID
    backup = tmp_path / "backup.json"
    code, out = cmesh(tmp_path, "id", "export", str(backup))
    assert code == 0
    assert json.loads(backup.read_text())["seed_hex"] == SEED
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600


def test_id_import_refuses_to_overwrite_and_bad_seed(tmp_path: Path) -> None:
    assert cmesh(tmp_path, "id", "show")[0] == 0
    code, out = cmesh(tmp_path, "id", "import", "--seed-hex", SEED)
    assert code == 1
    assert "error" in out
    code, out = cmesh(tmp_path, "id", "import", "--seed-hex", "zz", "--json")
    assert code == 1
    assert json.loads(out)["error"]["code"] == "bad_seed"


def test_home_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMESH_HOME", str(tmp_path / "envhome"))
    result = runner.invoke(app, ["id", "show"], env={"CMESH_HOME": str(tmp_path / "envhome")})
    assert result.exit_code == 0
    assert (tmp_path / "envhome" / "identity.json").exists()


def test_schema_job_prints_json_schema(tmp_path: Path) -> None:
    code, out = cmesh(tmp_path, "schema", "job")
    assert code == 0
    schema = json.loads(out)
    assert schema["title"] == "JobSpec"
    assert "resources" in schema["properties"]


def test_schema_ensemble_prints_json_schema_of_allocations_and_rules(tmp_path: Path) -> None:
    code, out = cmesh(tmp_path, "schema", "ensemble")
    assert code == 0
    schema = json.loads(out)
    assert schema["title"] == "EnsembleSpec"
    assert schema["$id"].endswith("/ensemble.json")
    assert {"allocations", "latency", "same_region", "spread"} <= set(schema["properties"])
    assert set(schema["required"]) == {"name", "allocations"}
    assert schema["properties"]["allocations"]["items"] == {"$ref": "#/$defs/JobSpec"}
    assert "max_rtt_ms" in schema["$defs"]["LatencyBound"]["properties"]


def test_submit_invalid_ensemble_names_the_rule_and_points_at_its_schema(tmp_path: Path) -> None:
    spec = tmp_path / "pair.yaml"
    spec.write_text(
        "name: pair\n"
        "allocations:\n"
        "  - {name: a, command: [run]}\n"
        "  - {name: b, command: [run]}\n"
        "latency:\n"
        "  - {a: a, b: ghost, max_rtt_ms: 10}\n"
    )
    code, out = cmesh(tmp_path, "submit", str(spec), "--nats", "nats://127.0.0.1:1", "--json")
    assert code == 2
    error = json.loads(out)["error"]
    assert error["code"] == "invalid_spec"
    assert "ghost" in error["message"]
    assert "cmesh schema ensemble" in error["hint"]


def test_submit_invalid_spec_names_field_and_exits_2(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\ncommand: [true]\nresources:\n  memory_mb: -1\n")
    code, out = cmesh(tmp_path, "submit", str(spec), "--nats", "nats://127.0.0.1:1", "--json")
    assert code == 2
    error = json.loads(out)["error"]
    assert error["code"] == "invalid_spec"
    assert "resources.memory_mb = -1" in error["message"]


def test_commands_without_a_mesh_say_how_to_start_one(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "CMESH_NATS_URL"}
    result = runner.invoke(app, ["--home", str(tmp_path), "status", "--json"], env=env)
    assert result.exit_code == 1
    error = json.loads(result.output)["error"]
    assert error["code"] == "no_mesh"
    assert "cmesh up" in error["hint"]


def test_jobs_on_an_empty_home(tmp_path: Path) -> None:
    code, out = cmesh(tmp_path, "jobs", "--json")
    assert code == 0
    assert json.loads(out) == []
    code, out = cmesh(tmp_path, "result", "abc", "--json")
    assert code == 1
    assert json.loads(out)["error"]["code"] == "unknown_job"


def queue_two_jobs(home: Path) -> tuple[str, str]:
    """Two jobs waiting for capacity in ``home``'s store: ``low`` arrived first, ``high``
    has the higher priority."""
    store = open_jobs(MeshHome(home))
    ids = []
    for number, (name, priority) in enumerate((("low", 0), ("high", 5))):
        job_id = f"{number + 10:x}" * 32
        store.create(job_id, name, {"name": name, "command": ["run"]})
        reason = f"{name}: cpu: needs 2, 0 free now\nindex: cpu removes 3 of 3 node(s)"
        store.set_status(job_id, "queued", reason)
        store.queue.enqueue(job_id, priority=priority, reason=reason)
        ids.append(job_id)
    return ids[0], ids[1]


def test_jobs_show_each_queued_job_s_position_and_json_its_reason(tmp_path: Path) -> None:
    low, high = queue_two_jobs(tmp_path)
    code, out = cmesh(tmp_path, "jobs")
    assert code == 0
    rows = {line.split()[1]: line for line in out.splitlines() if "queued" in line}
    assert "queued #1" in rows[high] and "queued #2" in rows[low]
    code, out = cmesh(tmp_path, "jobs", "--json")
    views = {view["job_id"]: view for view in json.loads(out)}
    assert views[high]["queue_position"] == 1 and views[low]["queue_position"] == 2
    assert views[low]["status"] == "queued"
    assert views[low]["reason"].startswith("low: cpu: needs 2, 0 free now")


def test_result_of_a_queued_job_shows_its_position_and_reason(tmp_path: Path) -> None:
    low, _ = queue_two_jobs(tmp_path)
    code, out = cmesh(tmp_path, "result", low[:6])
    assert code == 0
    assert "queued" in out
    assert "queue position: 2" in out
    assert "reason: low: cpu: needs 2, 0 free now\n    index: cpu removes" in out
    code, out = cmesh(tmp_path, "result", low, "--json")
    view = json.loads(out)
    assert (view["status"], view["queue_position"]) == ("queued", 2)
    assert "index: cpu removes 3 of 3 node(s)" in view["reason"]


def test_help_lists_every_command(tmp_path: Path) -> None:
    code, out = cmesh(tmp_path, "--help")
    assert code == 0
    for command in (
        "id",
        "node",
        "schema",
        "up",
        "down",
        "status",
        "submit",
        "match",
        "jobs",
        "result",
        "demo",
        "cancel",
        "logs",
        "verify",
        "wallet",
        "ledger",
    ):
        assert command in out
