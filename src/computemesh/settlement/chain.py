"""Chains, the compiled contracts, and deploying them.

A chain is named by its id and reached by an RPC URL (``ChainSettings``); presets cover
Ethereum, Base, Arbitrum and a local anvil. Contracts are compiled from ``contracts/*.vy``
with the pinned ``vyper`` package when first needed. A ``Deployment`` (addresses, split,
start block) is what a client needs to use an existing deployment; it round-trips JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import vyper
from eth_account.signers.local import LocalAccount
from web3 import Web3

from computemesh.settlement.amounts import Split
from computemesh.settlement.errors import ChainError

CONTRACTS_DIR = Path(__file__).parent / "contracts"


@dataclass(frozen=True)
class ChainSettings:
    """One chain: id, RPC endpoint, and whether the test token may be deployed on it."""

    chain_id: int
    rpc_url: str
    name: str = ""
    test_network: bool = False


KNOWN_CHAINS: dict[str, tuple[int, bool]] = {
    "ethereum": (1, False),
    "base": (8453, False),
    "arbitrum": (42161, False),
    "sepolia": (11155111, True),
    "base-sepolia": (84532, True),
    "local": (31337, True),
}


def chain_settings(name: str, rpc_url: str) -> ChainSettings:
    """Settings for a known chain by name (``KNOWN_CHAINS``) at ``rpc_url``."""
    if name not in KNOWN_CHAINS:
        raise ChainError(
            f"unknown chain {name!r}", code="unknown_chain", hint=f"one of {sorted(KNOWN_CHAINS)}"
        )
    chain_id, test_network = KNOWN_CHAINS[name]
    return ChainSettings(chain_id=chain_id, rpc_url=rpc_url, name=name, test_network=test_network)


def connect(settings: ChainSettings, *, timeout: float = 30.0) -> Web3:
    """A ``Web3`` on ``settings.rpc_url``; ``ChainError`` (``wrong_chain``) when the endpoint
    serves another chain id, ``chain_unreachable`` (retryable) when it does not answer."""
    w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": timeout}))
    try:
        served = w3.eth.chain_id
    except Exception as exc:  # the HTTP stack raises many types; all mean "unreachable"
        raise ChainError(
            f"no chain answers at {settings.rpc_url}: {exc}",
            code="chain_unreachable",
            retryable=True,
        ) from exc
    if served != settings.chain_id:
        raise ChainError(
            f"{settings.rpc_url} serves chain {served}, not {settings.chain_id}",
            code="wrong_chain",
        )
    return w3


@dataclass(frozen=True)
class CompiledContract:
    abi: list[dict[str, Any]]
    bytecode: str


@cache
def compiled(name: str) -> CompiledContract:
    """``contracts/<name>.vy`` compiled (ABI and deployment bytecode), once per process."""
    path = CONTRACTS_DIR / f"{name}.vy"
    output = vyper.compile_code(
        path.read_text(), contract_path=path.name, output_formats=["abi", "bytecode"]
    )
    return CompiledContract(abi=output["abi"], bytecode=output["bytecode"])


@dataclass(frozen=True)
class Deployment:
    """Where the settlement contracts live on one chain."""

    chain_id: int
    token: str
    settlement: str
    treasury: str
    arbiter: str
    split: Split
    block: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "token": self.token,
            "settlement": self.settlement,
            "treasury": self.treasury,
            "arbiter": self.arbiter,
            "split": self.split.to_dict(),
            "block": self.block,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deployment:
        return cls(
            chain_id=int(data["chain_id"]),
            token=Web3.to_checksum_address(data["token"]),
            settlement=Web3.to_checksum_address(data["settlement"]),
            treasury=Web3.to_checksum_address(data["treasury"]),
            arbiter=Web3.to_checksum_address(data["arbiter"]),
            split=Split(**data["split"]),
            block=int(data["block"]),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Deployment:
        return cls.from_dict(json.loads(path.read_text()))


def deploy_contract(w3: Web3, deployer: LocalAccount, name: str, *args: Any) -> tuple[str, int]:
    """Deploy ``contracts/<name>.vy``; returns its address and block."""
    contract = compiled(name)
    factory = w3.eth.contract(abi=contract.abi, bytecode=contract.bytecode)
    tx = factory.constructor(*args).build_transaction(
        {
            "from": deployer.address,
            "nonce": w3.eth.get_transaction_count(deployer.address, "pending"),
            "chainId": w3.eth.chain_id,
        }
    )
    signed = deployer.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction)
    )
    if receipt["status"] != 1 or not receipt["contractAddress"]:
        raise ChainError(f"deploying {name} failed", code="deploy_failed")
    return str(receipt["contractAddress"]), int(receipt["blockNumber"])


def deploy_settlement(
    w3: Web3,
    deployer: LocalAccount,
    *,
    treasury: str,
    arbiter: str,
    split: Split | None = None,
    token: str | None = None,
    test_network: bool = False,
) -> Deployment:
    """Deploy the settlement contract over ``token``, or over a new test token.

    A new ``PaymentToken`` (minted by ``deployer``) is deployed only when ``token`` is None
    and ``test_network`` is true; otherwise ``ChainError`` (``no_token``).
    """
    split = split or Split()
    if token is None:
        if not test_network:
            raise ChainError("a production chain needs an existing token", code="no_token")
        token, _ = deploy_contract(w3, deployer, "PaymentToken", "computemesh credit", "CMC")
    address, block = deploy_contract(
        w3,
        deployer,
        "Settlement",
        token,
        treasury,
        arbiter,
        split.provider_bps,
        split.treasury_bps,
        split.creator_bps,
    )
    return Deployment(
        chain_id=w3.eth.chain_id,
        token=Web3.to_checksum_address(token),
        settlement=address,
        treasury=Web3.to_checksum_address(treasury),
        arbiter=Web3.to_checksum_address(arbiter),
        split=split,
        block=block,
    )
