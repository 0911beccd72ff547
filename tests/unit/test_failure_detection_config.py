"""The failure detector's bounds where users run a consumer: options, then environment.

``app.consumer.failure_detection`` resolves them for every consumer session; `cmesh submit`,
`cmesh result` and `cmesh demo` take ``--suspect-after`` / ``--dead-after``; a bad bound is
refused with its reason before anything connects or starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from computemesh.app.consumer import ENV_DEAD_AFTER, ENV_SUSPECT_AFTER, failure_detection
from computemesh.cli.main import app
from computemesh.models.errors import MeshError
from computemesh.orchestrator import OrchestratorSettings

runner = CliRunner()
DEFAULTS = OrchestratorSettings()
UNREACHABLE = "nats://127.0.0.1:1"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SUSPECT_AFTER, raising=False)
    monkeypatch.delenv(ENV_DEAD_AFTER, raising=False)


def bounds(settings: OrchestratorSettings) -> tuple[float, float]:
    return settings.suspect_after_s, settings.dead_after_s


def refusal(**given: float | None) -> MeshError:
    with pytest.raises(MeshError) as refused:
        failure_detection(DEFAULTS, **given)
    assert refused.value.code == "bad_liveness"
    assert refused.value.hint is not None and "--dead-after" in refused.value.hint
    return refused.value


def test_without_options_or_environment_the_settings_stand() -> None:
    assert bounds(failure_detection(DEFAULTS)) == (2.5, 5.0)
    mine = OrchestratorSettings(suspect_after_s=4, dead_after_s=9)
    assert bounds(failure_detection(mine)) == (4, 9)


def test_the_options_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SUSPECT_AFTER, "3")
    monkeypatch.setenv(ENV_DEAD_AFTER, " 8.5 ")
    assert bounds(failure_detection(DEFAULTS)) == (3.0, 8.5)
    assert bounds(failure_detection(DEFAULTS, dead_after_s=20)) == (3.0, 20)
    assert bounds(failure_detection(DEFAULTS, suspect_after_s=1, dead_after_s=2)) == (1, 2)
    resolved = failure_detection(DEFAULTS, suspect_after_s=6, dead_after_s=12)
    assert resolved.liveness_bounds().dead_after_s == 12
    assert resolved.bid_window_s == DEFAULTS.bid_window_s  # the rest is left alone


def test_suspect_must_come_before_dead() -> None:
    refused = refusal(suspect_after_s=5, dead_after_s=3)
    assert "suspect (5 s) before it is declared dead (3 s)" in refused.message
    refusal(suspect_after_s=4, dead_after_s=4)
    refusal(dead_after_s=2)  # under the default suspect bound


def test_bounds_out_of_range_are_refused() -> None:
    assert "under a heartbeat" in refusal(suspect_after_s=0.5).message
    assert "never declared dead" in refusal(dead_after_s=86_400).message
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        assert "positive number of seconds" in refusal(suspect_after_s=bad).message


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DEAD_AFTER, "soon")
    assert f"${ENV_DEAD_AFTER}='soon' is not a number" in refusal().message
    monkeypatch.setenv(ENV_DEAD_AFTER, "-3")
    assert "positive" in refusal().message
    monkeypatch.setenv(ENV_DEAD_AFTER, "")
    assert bounds(failure_detection(DEFAULTS)) == (2.5, 5.0)  # empty: not set


def test_consumer_commands_take_the_bounds(tmp_path: Path) -> None:
    for command in ("submit", "result", "demo"):
        shown = runner.invoke(app, ["--home", str(tmp_path), command, "--help"])
        assert shown.exit_code == 0
        assert "--suspect-after" in shown.output and "--dead-after" in shown.output


def test_submit_refuses_bad_bounds_before_connecting(tmp_path: Path) -> None:
    spec = Path(__file__).parents[2] / "examples" / "primes.yaml"
    args = ["--home", str(tmp_path), "submit", str(spec), "--nats", UNREACHABLE, "--json"]
    refused = runner.invoke(app, [*args, "--suspect-after", "5", "--dead-after", "3"])
    assert refused.exit_code == 1
    error = json.loads(refused.output)["error"]
    assert error["code"] == "bad_liveness" and "--suspect-after" in error["hint"]


def test_demo_refuses_bad_bounds_before_starting_a_mesh(tmp_path: Path) -> None:
    args = ["--home", str(tmp_path), "demo", "--json", "--dead-after", "0"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1
    assert json.loads(refused.output)["error"]["code"] == "bad_liveness"
    assert not (tmp_path / "demo").exists()
