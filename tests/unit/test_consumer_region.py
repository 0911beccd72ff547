"""The consumer's region (``app.consumer.consumer_region``) and the `cmesh cancel` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from computemesh.app.consumer import ENV_REGION, consumer_region
from computemesh.app.home import MeshHome
from computemesh.cli.main import app
from computemesh.models.errors import MeshError

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MeshHome:
    monkeypatch.delenv(ENV_REGION, raising=False)
    home = MeshHome(tmp_path)
    home.ensure()
    return home


def write_local_mesh(home: MeshHome, regions: list[str]) -> None:
    home.mesh_dir.mkdir(parents=True, exist_ok=True)
    nodes = [{"name": f"node-{n}", "region": region} for n, region in enumerate(regions, 1)]
    home.state_file.write_text(json.dumps({"nats_url": "nats://127.0.0.1:1", "nodes": nodes}))


def test_the_option_wins_then_the_environment_then_the_local_mesh(
    home: MeshHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert consumer_region(home) is None
    write_local_mesh(home, ["us-east", "eu-west"])
    assert consumer_region(home) == "us-east"
    monkeypatch.setenv(ENV_REGION, "ap-south")
    assert consumer_region(home) == "ap-south"
    assert consumer_region(home, "eu-west") == "eu-west"


def test_a_local_mesh_without_nodes_or_with_odd_state_gives_no_region(home: MeshHome) -> None:
    write_local_mesh(home, [])
    assert consumer_region(home) is None
    home.state_file.write_text(json.dumps({"nodes": [{"region": 7}, "x"]}))
    assert consumer_region(home) is None


def test_a_bad_region_name_is_refused(home: MeshHome, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("EU West", "-eu", "eu/west", "x" * 64):
        with pytest.raises(MeshError) as refused:
            consumer_region(home, bad)
        assert refused.value.code == "bad_region"
    monkeypatch.setenv(ENV_REGION, "Nowhere!")
    with pytest.raises(MeshError):
        consumer_region(home)


def test_cancel_of_an_unknown_job_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--home", str(tmp_path), "cancel", "abc", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["error"]["code"] == "unknown_job"


def test_session_commands_take_a_region(tmp_path: Path) -> None:
    for command in ("submit", "result", "match", "cancel"):
        result = runner.invoke(app, ["--home", str(tmp_path), command, "--help"])
        assert result.exit_code == 0
        assert "--region" in result.output
