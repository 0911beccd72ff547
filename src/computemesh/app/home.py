"""The layout of a computemesh home directory.

$CMESH_HOME (default ~/.computemesh)
├── identity.json          this user's key (see identity.keystore for the format)
├── consumer.db            the consumer's jobs (SQLite)
├── ledger.db              the embedded ledger (a local mesh's is shared with its nodes)
├── ledger.json            which ledger backend to settle on, when not the embedded one
├── ledger-receipts.db     receipts issued by this home's chain client (EVM backend)
└── mesh/                  a local mesh started by `cmesh up`
    ├── state.json         NATS url and pid, node pids and homes
    ├── nats/              nats-server's JetStream store
    ├── logs/              nats.log, node-1.log, ...
    ├── treasury/          the local network's treasury key (identity.json)
    └── nodes/node-1/      each node's own home: identity.json, node.db, work/
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from computemesh.identity.keystore import resolve_home
from computemesh.models.errors import MeshError

ENV_NATS_URL = "CMESH_NATS_URL"
ENV_LEDGER = "CMESH_LEDGER"
READY_FILE = "node.ready.json"


@dataclass(frozen=True)
class MeshHome:
    root: Path

    @classmethod
    def resolve(cls, home: str | Path | None = None) -> MeshHome:
        return cls(resolve_home(home))

    @property
    def consumer_db(self) -> Path:
        return self.root / "consumer.db"

    @property
    def ledger_db(self) -> Path:
        return self.root / "ledger.db"

    @property
    def ledger_config(self) -> Path:
        return self.root / "ledger.json"

    @property
    def ledger_receipts(self) -> Path:
        return self.root / "ledger-receipts.db"

    @property
    def treasury_home(self) -> Path:
        return self.mesh_dir / "treasury"

    @property
    def mesh_dir(self) -> Path:
        return self.root / "mesh"

    @property
    def state_file(self) -> Path:
        return self.mesh_dir / "state.json"

    @property
    def nats_dir(self) -> Path:
        return self.mesh_dir / "nats"

    @property
    def logs_dir(self) -> Path:
        return self.mesh_dir / "logs"

    def node_home(self, name: str) -> Path:
        return self.mesh_dir / "nodes" / name

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise MeshError(f"cannot read {self.state_file}: {exc}", code="bad_state") from exc
        return data if isinstance(data, dict) else None

    def write_state(self, state: dict[str, Any]) -> None:
        self.mesh_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def nats_url(self, explicit: str | None = None) -> str:
        """--nats, then $CMESH_NATS_URL, then the local mesh's state file."""
        url = explicit or os.environ.get(ENV_NATS_URL)
        if url:
            return url
        state = self.read_state()
        if state and isinstance(state.get("nats_url"), str):
            return str(state["nats_url"])
        raise MeshError(
            f"no mesh is running for home {self.root}",
            code="no_mesh",
            hint="start one with `cmesh up`, or pass --nats URL to join an existing one",
        )
