"""Choosing a home's ledger: the split typed at `cmesh ledger init`, and `ledger.json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from computemesh.app.home import ENV_LEDGER, MeshHome
from computemesh.app.ledger import (
    consumer_ledger,
    create_local_ledger,
    node_ledger_path,
    open_node_ledger,
)
from computemesh.app.ledger_config import load_ledger_config
from computemesh.app.localmesh import mesh_up
from computemesh.cli.main import app
from computemesh.identity import Identity
from computemesh.settlement import SettlementError, Split, SqliteLedger
from computemesh.settlement.amounts import parse_split

runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80/15/5", Split(8000, 1500, 500)),
        ("70.5/25/4.5", Split(7050, 2500, 450)),
        (" 100 / 0 / 0 ", Split(10000, 0, 0)),
    ],
)
def test_a_split_in_percent_becomes_basis_points(text: str, expected: Split) -> None:
    assert parse_split(text) == expected


@pytest.mark.parametrize(
    "text", ["80/15/10", "80/15", "80/15/5/0", "a/b/c", "110/-5/-5", "80.001/15/4.999", "nan/0/0"]
)
def test_a_split_not_adding_up_to_100_percent_is_refused(text: str) -> None:
    with pytest.raises(SettlementError) as info:
        parse_split(text)
    assert info.value.code == "bad_split"


def test_cli_ledger_init_takes_the_split_and_refuses_a_bad_one(tmp_path: Path) -> None:
    home = ["--home", str(tmp_path / "home")]
    bad = runner.invoke(app, [*home, "ledger", "init", "--split", "80/15/10", "--json"])
    assert bad.exit_code == 1
    assert json.loads(bad.output)["error"]["code"] == "bad_split"
    good = runner.invoke(app, [*home, "ledger", "init", "--split", "70/20/10", "--json"])
    assert good.exit_code == 0, good.output
    created = json.loads(good.output)
    assert created["split"] == {"provider_bps": 7000, "treasury_bps": 2000, "creator_bps": 1000}
    assert created["backend"] == "sqlite"


def test_without_a_config_a_home_uses_its_embedded_ledger(tmp_path: Path) -> None:
    home = MeshHome(tmp_path)
    assert load_ledger_config(home).backend == "sqlite"
    assert consumer_ledger(home, Identity.generate()) is None
    assert create_local_ledger(home) == home.ledger_db


@pytest.mark.parametrize(
    "content",
    [
        "{",
        "[]",
        json.dumps({"backend": "tron"}),
        json.dumps({"backend": "evm"}),
        json.dumps({"backend": "evm", "chain": {"rpc_url": "http://127.0.0.1:1"}}),
    ],
)
def test_a_bad_config_file_is_refused_before_anything_is_opened(
    tmp_path: Path, content: str
) -> None:
    home = MeshHome(tmp_path)
    home.ledger_config.write_text(content)
    for use in (
        lambda: load_ledger_config(home),
        lambda: consumer_ledger(home, Identity.generate()),
        lambda: create_local_ledger(home),
    ):
        with pytest.raises(SettlementError) as info:
            use()
        assert info.value.code == "bad_ledger_config"
        assert str(home.ledger_config) in info.value.message


def test_a_node_opens_the_embedded_ledger_or_refuses_what_names_no_ledger(tmp_path: Path) -> None:
    home = MeshHome(tmp_path)
    path = create_local_ledger(home)
    assert isinstance(open_node_ledger(path, Identity.generate()), SqliteLedger)
    sqlite_config = tmp_path / "sqlite.json"
    sqlite_config.write_text(json.dumps({"backend": "sqlite"}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"backend": "evm"}))
    for given, code in [
        (tmp_path / "missing.db", "no_ledger"),
        (sqlite_config, "no_ledger"),
        (bad, "bad_ledger_config"),
    ]:
        with pytest.raises(SettlementError) as info:
            open_node_ledger(given, Identity.generate())
        assert info.value.code == code, given


def test_a_local_mesh_refuses_a_ledger_choice_its_home_contradicts(tmp_path: Path) -> None:
    home = MeshHome(tmp_path / "home")
    home.ensure()
    home.ledger_config.write_text("{}")
    with pytest.raises(SettlementError) as info:
        mesh_up(home, nodes=1, ledger="evm")
    assert info.value.code == "ledger_exists"
    home.ledger_config.unlink()
    home.ledger_receipts.write_text("")  # receipts of a chain the home no longer names
    with pytest.raises(SettlementError) as info:
        mesh_up(home, nodes=1, ledger="evm")
    assert info.value.code == "ledger_exists"
    assert home.read_state() is None  # refused before anything started

    result = runner.invoke(app, ["--home", str(home.root), "up", "--ledger", "tron", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["error"]["code"] == "bad_ledger_config"


def test_a_node_checks_escrow_on_the_given_ledger_else_its_homes_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_LEDGER, raising=False)
    node_home = MeshHome(tmp_path / "node")
    assert node_ledger_path(home=node_home.root) is None
    node_home.ensure()
    node_home.ledger_config.write_text("{}")
    assert node_ledger_path(home=node_home.root) == node_home.ledger_config
    monkeypatch.setenv(ENV_LEDGER, str(tmp_path / "shared.db"))
    assert node_ledger_path(home=node_home.root) == tmp_path / "shared.db"
    given = tmp_path / "given.json"
    assert node_ledger_path(given, home=node_home.root) == given
