"""A local mesh on this machine: one nats-server and N provider node processes.

`cmesh up` starts them detached (they outlive the command) and records their pids in the
home's ``mesh/state.json``; `cmesh down` stops them by pid. A mesh may instead join an
existing NATS URL, in which case only the nodes are started here.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from computemesh.app.home import READY_FILE, MeshHome
from computemesh.identity import load_or_create_identity
from computemesh.models.errors import MeshError
from computemesh.transport import (
    is_process_alive,
    spawn_detached,
    start_nats_server,
    stop_process,
)

log = logging.getLogger(__name__)

DEFAULT_REGIONS = ("eu-west", "us-east", "ap-south")
BASE_PRICE = 0.10
PRICE_STEP = 0.02


@dataclass(frozen=True)
class NodePlan:
    name: str
    region: str
    price_per_cpu_hour: float


def plan_nodes(count: int, regions: list[str] | None = None) -> list[NodePlan]:
    """Node names, regions (cycled) and prices (rising) for a local mesh of ``count``."""
    pool = regions or list(DEFAULT_REGIONS)
    return [
        NodePlan(
            name=f"node-{index + 1}",
            region=pool[index % len(pool)],
            price_per_cpu_hour=round(BASE_PRICE + PRICE_STEP * index, 4),
        )
        for index in range(count)
    ]


def node_command(home: Path, nats_url: str, plan: NodePlan, *, sandbox: bool) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "computemesh",
        "--home",
        str(home),
        "node",
        "start",
        "--nats",
        nats_url,
        "--region",
        plan.region,
        "--price",
        str(plan.price_per_cpu_hour),
        "--log-json",
    ]
    if not sandbox:
        command.append("--insecure-no-sandbox")
    return command


def _wait_ready(node_home: Path, pid: int, log_file: Path, deadline: float) -> dict[str, Any]:
    ready = node_home / READY_FILE
    while time.monotonic() < deadline:
        if ready.exists():
            data: dict[str, Any] = json.loads(ready.read_text())
            if data.get("pid") == pid:
                return data
        if not is_process_alive(pid):
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise MeshError(f"node at {node_home} exited during start:\n{tail}", code="node_died")
        time.sleep(0.05)
    raise MeshError(f"node at {node_home} was not ready in time", code="node_timeout")


def spawn_nodes(
    home: MeshHome, nats_url: str, plans: list[NodePlan], *, sandbox: bool = True
) -> list[dict[str, Any]]:
    """Spawn one detached node process per plan; returns what to record for each."""
    started = []
    for plan in plans:
        node_home = home.node_home(plan.name)
        node_home.mkdir(parents=True, exist_ok=True, mode=0o700)
        (node_home / READY_FILE).unlink(missing_ok=True)
        did = load_or_create_identity(node_home).did
        log_file = home.logs_dir / f"{plan.name}.log"
        command = node_command(node_home, nats_url, plan, sandbox=sandbox)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        pid = spawn_detached(command, log_file, env=env).pid
        started.append(
            {
                "name": plan.name,
                "pid": pid,
                "did": did,
                "home": str(node_home),
                "region": plan.region,
                "price_per_cpu_hour": plan.price_per_cpu_hour,
                "log": str(log_file),
            }
        )
    return started


def wait_nodes_ready(nodes: list[dict[str, Any]], *, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    for node in nodes:
        _wait_ready(Path(node["home"]), node["pid"], Path(node["log"]), deadline)


def mesh_up(
    home: MeshHome,
    *,
    nodes: int,
    nats_url: str | None = None,
    regions: list[str] | None = None,
    sandbox: bool = True,
) -> dict[str, Any]:
    """Start NATS (unless joining ``nats_url``) and the nodes; write and return the state."""
    if home.read_state() is not None:
        raise MeshError(
            f"a mesh is already recorded in {home.state_file}",
            code="mesh_running",
            hint="stop it first with `cmesh down`",
        )
    home.ensure()
    state: dict[str, Any] = {"started_at": time.time(), "nats": None, "nodes": []}
    if nats_url is None:
        server = start_nats_server(home.nats_dir, log_file=home.logs_dir / "nats.log")
        state["nats"] = {"pid": server.pid, "port": server.port, "store": str(server.store_dir)}
        nats_url = server.url
    state["nats_url"] = nats_url
    home.write_state(state)
    try:
        state["nodes"] = spawn_nodes(home, nats_url, plan_nodes(nodes, regions), sandbox=sandbox)
        home.write_state(state)
        wait_nodes_ready(state["nodes"])
    except BaseException:
        mesh_down(home)
        raise
    return state


def mesh_down(home: MeshHome) -> dict[str, Any]:
    """Stop every recorded process by pid and forget the mesh. Safe to repeat."""
    state = home.read_state()
    if state is None:
        return {"stopped": [], "was_running": False}
    stopped = []
    for node in state.get("nodes", []):
        if stop_process(int(node["pid"])):
            stopped.append(node["name"])
    nats = state.get("nats")
    if nats and stop_process(int(nats["pid"])):
        stopped.append("nats-server")
    home.state_file.unlink(missing_ok=True)
    return {"stopped": stopped, "was_running": True}
