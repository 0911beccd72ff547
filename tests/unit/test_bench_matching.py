"""`bench/matching.py --json`: its last line is one JSON object with the keys the
benchmark promises, measured here on a tiny fleet."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "matching.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_matching", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def test_json_report_is_last_and_has_the_promised_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench()
    tiny = bench.Sizes(120, 300, 60, 20, 200, 50, 10, runs=1)
    monkeypatch.setattr(bench, "QUICK", tiny)
    bench.main(["--quick", "--json", "--seed", "3"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    for key in bench.REQUIRED_KEYS:
        assert isinstance(report[key], int | float), key
        assert report[key] >= 0, key
    assert {
        "placements_per_s_10k",
        "placements_per_s_100k",
        "p99_single_ms_100k",
        "baseline_placements_per_s_10k",
        "cpsat_ensemble_s",
    } <= set(report)
    assert report["nodes_small"] == 120 and report["nodes_large"] == 300
    assert report["jobs"] == 60 and report["single_samples"] == 20
    assert 0 < report["placed_10k"] <= report["placed_100k"] <= 60
    assert report["p50_single_ms_100k"] <= report["p99_single_ms_100k"]
    assert report["cpsat_ensemble_s"] <= report["ensemble_total_s"]


def test_without_json_no_report_is_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench()
    monkeypatch.setattr(bench, "QUICK", bench.Sizes(40, 60, 10, 5, 40, 20, 3, runs=1))
    bench.main(["--quick"])
    out = capsys.readouterr().out
    assert "placements/s, 10k jobs onto 10k nodes" in out
    assert not out.strip().splitlines()[-1].startswith("{")
