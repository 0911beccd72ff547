"""`cmesh node start` refuses bad rates (by the option or by `NodeSettings`) before it
connects to anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from computemesh.cli.main import app
from computemesh.cli.output import EXIT_BAD_INPUT

runner = CliRunner()
UNREACHABLE = "nats://127.0.0.1:9"


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--price-fuel", "nan", "--price-fuel"),
        ("--price-out", "inf", "price_per_gb_out"),
        ("--price-memory", "2e6", "price_per_gb_hour"),
        ("--price", "1e7", "price_per_cpu_hour"),
    ],
)
def test_a_rate_that_is_not_finite_or_too_high_is_refused(
    tmp_path: Path, option: str, value: str, named: str
) -> None:
    args = ["--home", str(tmp_path), "node", "start", "--nats", UNREACHABLE, option, value]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert named in result.output


def test_a_negative_rate_is_refused_by_the_option(tmp_path: Path) -> None:
    args = ["--home", str(tmp_path), "node", "start", "--nats", UNREACHABLE, "--price-out", "-1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "--price-out" in result.output
