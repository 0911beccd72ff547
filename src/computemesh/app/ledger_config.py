"""Which ledger a home settles on: ``<home>/ledger.json``, written by `cmesh ledger init`.

Without the file a home uses its embedded ledger, ``<home>/ledger.db``. With the EVM
backend it settles on a deployed settlement contract::

    {
      "backend": "evm",
      "chain": {"chain_id": 31337, "name": "local", "rpc_url": "http://127.0.0.1:8545"},
      "deployment": {...},      Deployment.to_dict(): token, settlement, treasury, ...
      "settings": {...}         LedgerSettings.to_dict(): treasury DID, split, arbiters, ...
    }

The home's chain account is derived from its identity (``account_from_identity``); the
receipts its client issues are kept in ``<home>/ledger-receipts.db``. The file is read
once, at the composition root (``app.ledger.open_home_ledger``), and every field is
checked: a bad file is refused with ``bad_ledger_config`` naming what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from computemesh.app.home import MeshHome
from computemesh.models.errors import MeshError
from computemesh.settlement import LedgerSettings, SettlementError

if TYPE_CHECKING:
    from computemesh.settlement.chain import ChainSettings, Deployment

Backend = Literal["sqlite", "evm"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "evm")


def bad_config(message: str, hint: str | None = None) -> SettlementError:
    return SettlementError(message, code="bad_ledger_config", hint=hint)


@dataclass(frozen=True)
class EvmLedgerConfig:
    """A chain, the settlement contract deployed on it, and the network's rules."""

    chain: ChainSettings
    deployment: Deployment
    settings: LedgerSettings

    def __post_init__(self) -> None:
        if self.deployment.chain_id != self.chain.chain_id:
            raise bad_config(
                f"the deployment is on chain {self.deployment.chain_id}, "
                f"the configured chain is {self.chain.chain_id}"
            )
        if self.settings.split != self.deployment.split:
            raise bad_config(
                f"the split {self.settings.split.to_dict()} differs from the deployment's "
                f"{self.deployment.split.to_dict()}",
                hint="a deployment's split is fixed when its contract is deployed",
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": "evm",
            "chain": {
                "chain_id": self.chain.chain_id,
                "name": self.chain.name,
                "rpc_url": self.chain.rpc_url,
            },
            "deployment": self.deployment.to_dict(),
            "settings": self.settings.to_dict(),
        }


@dataclass(frozen=True)
class LedgerConfig:
    """The backend a home settles on; ``evm`` is set exactly when the backend is ``evm``."""

    backend: Backend = "sqlite"
    evm: EvmLedgerConfig | None = None


def chain_of(
    rpc_url: str, *, name: str | None = None, chain_id: int | None = None
) -> ChainSettings:
    """The chain at ``rpc_url``, by ``name`` (a known chain), ``chain_id``, or both agreeing.

    Refuses (``bad_ledger_config``) a URL that is not http(s), neither name nor id, and a
    name whose chain id is not ``chain_id``. Nothing is contacted.
    """
    from computemesh.settlement.chain import ChainSettings, chain_settings

    parsed = urlparse(rpc_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise bad_config(f"the RPC URL must be http(s)://host[:port][/path], got {rpc_url!r}")
    if name is None and chain_id is None:
        raise bad_config("name the chain or its id", hint="--chain NAME or --chain-id N")
    if name is None:
        if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
            raise bad_config(f"a chain id is a positive integer, got {chain_id!r}")
        return ChainSettings(chain_id=chain_id, rpc_url=rpc_url)
    try:
        known = chain_settings(name, rpc_url)
    except MeshError as exc:
        raise bad_config(exc.message, hint=exc.hint) from exc
    if chain_id is not None and chain_id != known.chain_id:
        raise bad_config(f"chain {name!r} has id {known.chain_id}, not {chain_id}")
    return known


def evm_config_from_dict(data: Mapping[str, Any]) -> EvmLedgerConfig:
    """The EVM section of a config file; ``bad_ledger_config`` naming the bad field."""
    from computemesh.settlement.chain import Deployment

    chain = _section(data, "chain")
    deployment_data = _section(data, "deployment")
    settings_data = _section(data, "settings")
    rpc_url, name, chain_id = chain.get("rpc_url"), chain.get("name"), chain.get("chain_id")
    if not isinstance(rpc_url, str):
        raise bad_config("chain.rpc_url is missing")
    settings = chain_of(rpc_url, name=name or None, chain_id=chain_id)
    try:
        deployment = Deployment.from_dict(dict(deployment_data))
    except (KeyError, TypeError, ValueError, MeshError) as exc:
        raise bad_config(f"the deployment is not valid: {exc!r}") from exc
    try:
        rules = LedgerSettings.from_dict(settings_data)
    except (KeyError, TypeError, ValueError, MeshError) as exc:
        raise bad_config(f"the ledger settings are not valid: {exc!r}") from exc
    return EvmLedgerConfig(chain=settings, deployment=deployment, settings=rules)


def load_ledger_config(home: MeshHome) -> LedgerConfig:
    """The home's ledger config: ``sqlite`` when it has no ``ledger.json``."""
    return load_ledger_config_file(home.ledger_config)


def load_ledger_config_file(path: Path) -> LedgerConfig:
    """The ledger config in ``path`` (a home's ``ledger.json``, or the copy a node is
    given): ``sqlite`` when there is no such file, ``bad_ledger_config`` when it is bad."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return LedgerConfig()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_config(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise bad_config(f"{path} holds no JSON object")
    backend = data.get("backend")
    if backend == "sqlite":
        return LedgerConfig()
    if backend != "evm":
        raise bad_config(f"{path}: unknown ledger backend {backend!r}", hint=f"one of {BACKENDS}")
    try:
        return LedgerConfig(backend="evm", evm=evm_config_from_dict(data))
    except SettlementError as exc:
        raise bad_config(f"{path}: {exc.message}", hint=exc.hint) from exc


def save_ledger_config(home: MeshHome, config: EvmLedgerConfig) -> None:
    home.ensure()
    path = home.ledger_config
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    tmp.replace(path)


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = data.get(name)
    if not isinstance(section, Mapping):
        raise bad_config(f"the {name!r} section is missing")
    return section
