"""`cmesh wallet` on an EVM chain chosen by `cmesh ledger init --backend evm`, on anvil."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from typer.testing import CliRunner
from web3 import Web3

from computemesh.cli.main import app
from computemesh.settlement import chain_settings, connect, deploy_settlement
from computemesh.settlement.anvil import AnvilNode, free_port, start_anvil, stop_anvil
from computemesh.settlement.chain import Deployment, compiled

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CREDIT = 1_000_000
runner = CliRunner()


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilNode]:
    node = start_anvil()
    try:
        yield node
    finally:
        stop_anvil(node)


def funded(w3: Web3, address: str) -> None:
    w3.provider.make_request("anvil_setBalance", [address, hex(10**20)])  # type: ignore[arg-type]


def send(w3: Web3, key: LocalAccount, function: Any) -> None:
    tx = function.build_transaction(
        {"from": key.address, "nonce": w3.eth.get_transaction_count(key.address)}
    )
    signed = key.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction)
    )
    assert receipt["status"] == 1


class Home:
    def __init__(self, root: Path) -> None:
        self.root = root

    def cmesh(self, *args: str) -> tuple[int, dict[str, Any]]:
        result = runner.invoke(app, ["--home", str(self.root), *args, "--json"])
        return result.exit_code, json.loads(result.output)

    def error(self, *args: str) -> str:
        code, data = self.cmesh(*args)
        assert code == 1, data
        return str(data["error"]["code"])


@pytest.fixture
def chain(anvil: AnvilNode, tmp_path: Path) -> tuple[Web3, LocalAccount, Path]:
    """A fresh deployment on anvil; its JSON file; the deployer, who can mint tokens."""
    w3 = connect(chain_settings("local", anvil.url))
    deployer: LocalAccount = Account.create()
    funded(w3, deployer.address)
    deployment = deploy_settlement(
        w3, deployer, treasury=deployer.address, arbiter=deployer.address, test_network=True
    )
    path = tmp_path / "deployment.json"
    deployment.save(path)
    return w3, deployer, path


def test_wallet_commands_run_on_the_evm_backend_chosen_by_config(
    anvil: AnvilNode, chain: tuple[Web3, LocalAccount, Path], tmp_path: Path
) -> None:
    w3, deployer, deployment_file = chain
    home = Home(tmp_path / "home")
    _, own = home.cmesh("wallet", "address")
    funded(w3, own["address"])
    token = w3.eth.contract(
        address=Web3.to_checksum_address(Deployment.load(deployment_file).token),
        abi=compiled("PaymentToken").abi,
    )
    send(w3, deployer, token.functions.mint(own["address"], 100 * CREDIT))
    init = ["ledger", "init", "--backend", "evm", "--rpc-url", anvil.url, "--chain", "local"]
    code, created = home.cmesh(*init, "--deployment", str(deployment_file))
    assert code == 0, created
    assert (created["backend"], created["address"]) == ("evm", own["address"])
    assert json.loads((home.root / "ledger.json").read_text())["backend"] == "evm"

    assert home.cmesh("wallet", "deposit", "12.5", "--id", "d1")[0] == 0
    assert home.cmesh("wallet", "deposit", "12.5", "--id", "d1")[0] == 0  # a retry pays once
    assert home.cmesh("wallet", "stake", "2", "--id", "s1")[0] == 0
    code, balance = home.cmesh("wallet", "balance")
    assert code == 0, balance
    assert (balance["available"], balance["escrowed"], balance["staked"]) == (
        10_500_000,
        0,
        2_000_000,
    )
    settlement = w3.eth.contract(
        address=Web3.to_checksum_address(Deployment.load(deployment_file).settlement),
        abi=compiled("Settlement").abi,
    )
    assert settlement.functions.balances(own["address"]).call() == 10_500_000
    assert settlement.functions.staked(own["address"]).call() == 2_000_000
    _, history = home.cmesh("wallet", "history")
    assert [row["op"] for row in history["history"]] == ["bind", "deposit", "stake"]
    assert home.error("wallet", "stake", "100") == "insufficient_funds"
    assert home.error("ledger", "verify") == "not_supported"
    assert home.error(*init, "--deployment", str(deployment_file)) == "ledger_exists"


def test_bad_ledger_config_is_refused_with_a_clear_error(
    anvil: AnvilNode, chain: tuple[Web3, LocalAccount, Path], tmp_path: Path
) -> None:
    _, _, deployment_file = chain
    home = Home(tmp_path / "home")
    deployment = ["--deployment", str(deployment_file)]
    evm = ["ledger", "init", "--backend", "evm", "--rpc-url", anvil.url]
    assert home.error(*evm, "--chain", "base", *deployment) == "bad_ledger_config"
    assert home.error(*evm, "--chain", "local", "--chain-id", "5", *deployment) == (
        "bad_ledger_config"
    )
    assert home.error(*evm, "--chain", "nowhere", *deployment) == "bad_ledger_config"
    assert home.error(*evm, "--chain", "local") == "bad_ledger_config"
    assert home.error(*evm, "--chain", "local", "--split", "70/25/5", *deployment) == (
        "bad_ledger_config"
    )
    assert home.error(*evm, "--chain", "local", "--split", "80/15/10", *deployment) == ("bad_split")
    ftp = ["ledger", "init", "--backend", "evm", "--rpc-url", "ftp://127.0.0.1/"]
    assert home.error(*ftp, "--chain", "local", *deployment) == "bad_ledger_config"
    assert home.error("ledger", "init", "--backend", "tron") == "bad_ledger_config"
    assert home.error("ledger", "init", "--rpc-url", anvil.url) == "bad_ledger_config"
    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = ["ledger", "init", "--backend", "evm", "--rpc-url", nowhere]
    assert home.error(*unreachable, "--chain", "local", *deployment) == "chain_unreachable"
    empty = json.loads(deployment_file.read_text())
    empty["settlement"] = Account.create().address
    no_contract = tmp_path / "no-contract.json"
    no_contract.write_text(json.dumps(empty))
    no_code = ["--deployment", str(no_contract)]
    assert home.error(*evm, "--chain", "local", *no_code) == "bad_ledger_config"
    assert not (home.root / "ledger.json").exists()

    config = home.root / "ledger.json"
    good = {
        "backend": "evm",
        "chain": {"chain_id": 31337, "name": "local", "rpc_url": anvil.url},
        "deployment": json.loads(deployment_file.read_text()),
        "settings": {
            "treasury": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
            "split": {"provider_bps": 8000, "treasury_bps": 1500, "creator_bps": 500},
            "arbiters": [],
            "verifiers": [],
        },
    }
    broken: list[object] = [
        "not json",
        ["a list"],
        {**good, "backend": "tron"},
        {**good, "chain": {"chain_id": 31337, "name": "local"}},
        {**good, "chain": {"chain_id": 1, "name": "", "rpc_url": anvil.url}},
        {**good, "deployment": {"chain_id": 31337}},
        {**good, "settings": {**good["settings"], "split": {"provider_bps": 1}}},
    ]
    for content in broken:
        config.write_text(content if isinstance(content, str) else json.dumps(content))
        code, data = home.cmesh("wallet", "balance")
        assert code == 1 and data["error"]["code"] == "bad_ledger_config", (content, data)
        assert "ledger.json" in data["error"]["message"]
