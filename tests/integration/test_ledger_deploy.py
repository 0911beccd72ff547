"""`cmesh ledger deploy` on a real anvil: the deployment `cmesh ledger init --backend evm`
reads, and the refusals of a deployment that cannot be made."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from typer.testing import CliRunner
from web3 import Web3

from computemesh.app.home import MeshHome
from computemesh.app.localmesh import mesh_up
from computemesh.cli.main import app
from computemesh.settlement import SettlementError, chain_settings, connect
from computemesh.settlement.anvil import (
    AnvilNode,
    find_anvil,
    fund_from_dev_account,
    start_anvil,
    stop_anvil,
)
from computemesh.settlement.chain import compiled

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(find_anvil() is None, reason="anvil is not installed (make setup)"),
]

runner = CliRunner()


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilNode]:
    node = start_anvil()
    try:
        yield node
    finally:
        stop_anvil(node)


def cmesh(home: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["--home", str(home), *args, "--json"])
    return result.exit_code, json.loads(result.output)


def error_code(home: Path, *args: str) -> str:
    code, data = cmesh(home, *args)
    assert code == 1, data
    return str(data["error"]["code"])


def test_a_deployment_made_by_the_cli_is_what_ledger_init_reads(
    anvil: AnvilNode, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    _, own = cmesh(home, "wallet", "address")
    out = tmp_path / "deployment.json"
    deploy = ["ledger", "deploy", "--rpc-url", anvil.url, "--chain", "local"]
    assert error_code(home, *deploy, "--out", str(out)) == "no_gas"
    fund_from_dev_account(anvil.url, own["address"], 10**19)
    treasury = Account.create().address
    code, made = cmesh(
        home, *deploy, "--out", str(out), "--split", "70/20/10", "--treasury-address", treasury
    )
    assert code == 0, made
    deployment = made["deployment"]
    assert json.loads(out.read_text()) == deployment
    assert (deployment["treasury"], deployment["arbiter"]) == (treasury, own["address"])
    w3 = connect(chain_settings("local", anvil.url))
    settlement = w3.eth.contract(
        address=Web3.to_checksum_address(deployment["settlement"]),
        abi=compiled("Settlement").abi,
    )
    assert settlement.functions.treasury_bps().call() == 2000
    assert settlement.functions.token().call() == deployment["token"]

    init = ["ledger", "init", "--backend", "evm", "--rpc-url", anvil.url, "--chain", "local"]
    code, created = cmesh(home, *init, "--deployment", str(out))
    assert code == 0, created
    assert created["split"] == {"provider_bps": 7000, "treasury_bps": 2000, "creator_bps": 1000}
    assert error_code(home, *deploy, "--out", str(out)) == "deployment_exists"

    with pytest.raises(SettlementError) as info:
        mesh_up(MeshHome(home), nodes=1, ledger="sqlite")
    assert info.value.code == "bad_ledger_config"


def test_a_deployment_that_cannot_be_made_is_refused(anvil: AnvilNode, tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = ["--out", str(tmp_path / "deployment.json")]
    deploy = ["ledger", "deploy", "--rpc-url", anvil.url]
    assert error_code(home, *deploy, "--chain", "local", "--treasury-address", "0x12", *out) == (
        "bad_ledger_config"
    )
    assert error_code(home, *deploy, "--chain", "local", "--token", "nope", *out) == (
        "bad_ledger_config"
    )
    # a chain named only by its id is not known to be a test network: it needs a token
    assert error_code(home, *deploy, "--chain-id", "31337", *out) == "bad_ledger_config"
    assert error_code(home, *deploy, "--chain", "base", *out) == "bad_ledger_config"
    assert error_code(home, *deploy, "--chain", "local", "--split", "90/20/0", *out) == (
        "bad_split"
    )
    assert not (tmp_path / "deployment.json").exists()
