"""A local mesh on this machine: one nats-server (or a cluster of them) and N node processes.

`cmesh up` starts them detached (they outlive the command) and records their pids in the
home's ``mesh/state.json``; `cmesh down` stops them by pid. With ``hubs`` above one the
servers form a NATS cluster on loopback and every node and consumer holds all their URLs
(``nats_url`` is then a comma-separated list), so losing one hub loses no client. A mesh may
instead join an existing NATS URL, in which case only the nodes are started here.

The mesh settles on the home's ledger: the embedded one unless ``ledger.json`` names a
chain. With ``ledger="evm"`` it brings up a chain of its own first (``app.localchain``:
anvil on loopback, recorded under ``chain`` in the state and stopped by pid on `down`).
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

from computemesh.app.home import ENV_LEDGER, READY_FILE, MeshHome
from computemesh.app.ledger import create_local_ledger
from computemesh.app.ledger_config import Backend, bad_config, load_ledger_config
from computemesh.identity import load_or_create_identity
from computemesh.models.errors import MeshError
from computemesh.transport import (
    NatsServerInfo,
    is_process_alive,
    spawn_detached,
    start_nats_server,
    stop_process,
)
from computemesh.transport.natsserver import (
    ClusterMembership,
    accepts_clients,
    start_nats_cluster,
)

log = logging.getLogger(__name__)

DEFAULT_REGIONS = ("eu-west", "us-east", "ap-south")
MAX_HUBS = 7
# Credits per cpu-hour on a local test network: 0.01 a cpu-second, so that the demo's
# sub-second jobs earn amounts the payments table can show.
BASE_PRICE = 36.0
PRICE_STEP = 3.6


@dataclass(frozen=True)
class NodePlan:
    """One node of a local mesh; ``allow_network``: ``node start --allow-network``."""

    name: str
    region: str
    price_per_cpu_hour: float
    allow_network: bool = False


def plan_nodes(
    count: int, regions: list[str] | None = None, *, allow_network: bool = False
) -> list[NodePlan]:
    """Node names, regions (cycled) and prices (rising) for a local mesh of ``count``."""
    pool = regions or list(DEFAULT_REGIONS)
    return [
        NodePlan(
            name=f"node-{index + 1}",
            region=pool[index % len(pool)],
            price_per_cpu_hour=round(BASE_PRICE + PRICE_STEP * index, 4),
            allow_network=allow_network,
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
    if plan.allow_network:
        command.append("--allow-network")
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
    return [_spawn_node(home, nats_url, plan, sandbox=sandbox) for plan in plans]


def _spawn_node(home: MeshHome, nats_url: str, plan: NodePlan, *, sandbox: bool) -> dict[str, Any]:
    node_home = home.node_home(plan.name)
    node_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    (node_home / READY_FILE).unlink(missing_ok=True)
    did = load_or_create_identity(node_home).did
    log_file = home.logs_dir / f"{plan.name}.log"
    command = node_command(node_home, nats_url, plan, sandbox=sandbox)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env[ENV_LEDGER] = str(create_local_ledger(home))
    pid = spawn_detached(command, log_file, env=env).pid
    return {
        "name": plan.name,
        "pid": pid,
        "did": did,
        "home": str(node_home),
        "region": plan.region,
        "price_per_cpu_hour": plan.price_per_cpu_hour,
        "allow_network": plan.allow_network,
        "log": str(log_file),
    }


def wait_nodes_ready(nodes: list[dict[str, Any]], *, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    for node in nodes:
        _wait_ready(Path(node["home"]), node["pid"], Path(node["log"]), deadline)


def mesh_up(
    home: MeshHome,
    *,
    nodes: int,
    hubs: int = 1,
    nats_url: str | None = None,
    regions: list[str] | None = None,
    sandbox: bool = True,
    allow_network: bool = False,
    ledger: Backend | None = None,
) -> dict[str, Any]:
    """Start NATS (unless joining ``nats_url``) and the nodes; write and return the state.

    ``allow_network`` starts every node with ``--allow-network``. ``ledger``: None settles
    on the home's ledger; ``"evm"`` starts a local chain first and binds the nodes'
    accounts on it (``app.localchain``); ``"sqlite"`` insists on the embedded ledger.

    ``hubs`` servers are started; more than one form a cluster. The state records each
    hub (name, pid, url, ports, store, log) and ``nats_url``, every hub's URL joined by commas.
    """
    if home.read_state() is not None:
        raise MeshError(
            f"a mesh is already recorded in {home.state_file}",
            code="mesh_running",
            hint="stop it first with `cmesh down`",
        )
    _check_hubs(hubs, joining=nats_url is not None)
    _check_ledger_choice(home, ledger)
    home.ensure()
    state: dict[str, Any] = {"started_at": time.time(), "hubs": [], "nodes": []}
    state["sandbox"] = sandbox
    if nats_url is None:
        state["hubs"] = [_hub_record(server) for server in start_hubs(home, hubs)]
        nats_url = ",".join(hub["url"] for hub in state["hubs"])
    state["nats_url"] = nats_url
    home.write_state(state)
    try:
        plans = plan_nodes(nodes, regions, allow_network=allow_network)
        if ledger == "evm":
            _start_chain(home, state, plans)
        state["nodes"] = spawn_nodes(home, nats_url, plans, sandbox=sandbox)
        home.write_state(state)
        wait_nodes_ready(state["nodes"])
    except BaseException:
        mesh_down(home)
        raise
    return state


def _check_ledger_choice(home: MeshHome, ledger: Backend | None) -> None:
    if ledger == "sqlite" and load_ledger_config(home).evm is not None:
        raise bad_config(
            f"this home settles on the chain {home.ledger_config} names, not the embedded ledger",
            hint="drop --ledger sqlite, or use another home",
        )
    if ledger == "evm":
        from computemesh.app.localchain import check_no_ledger_config

        check_no_ledger_config(home)


def _start_chain(home: MeshHome, state: dict[str, Any], plans: list[NodePlan]) -> None:
    from computemesh.app.localchain import bind_node_accounts, start_local_chain

    state["chain"] = start_local_chain(home)
    home.write_state(state)
    bind_node_accounts(home, [home.node_home(plan.name) for plan in plans])


def _check_hubs(hubs: int, *, joining: bool) -> None:
    if not 1 <= hubs <= MAX_HUBS:
        raise MeshError(f"--hubs must be between 1 and {MAX_HUBS}, not {hubs}", code="bad_hubs")
    if joining and hubs != 1:
        raise MeshError(
            "--hubs starts local servers; it cannot be combined with --nats",
            code="bad_hubs",
            hint="to join a cluster, pass all its URLs: --nats URL1,URL2,URL3",
        )


def start_hubs(home: MeshHome, count: int) -> list[NatsServerInfo]:
    """One nats-server, or a cluster of ``count``, each under ``mesh/nats/hub-N``."""
    if count == 1:
        return [start_nats_server(home.nats_dir / "hub-1", log_file=home.logs_dir / "hub-1.log")]
    return start_nats_cluster(home.nats_dir, count, logs_dir=home.logs_dir)


def _hub_record(server: NatsServerInfo) -> dict[str, Any]:
    record: dict[str, Any] = {
        "name": server.cluster.server_name if server.cluster else "hub-1",
        "pid": server.pid,
        "url": server.url,
        "host": server.host,
        "port": server.port,
        "store": str(server.store_dir),
        "log": str(server.log_file),
    }
    if server.cluster is not None:
        record["route_port"] = server.cluster.route_port
        record["monitor_port"] = server.cluster.monitor_port
        record["peer_routes"] = list(server.cluster.peer_routes)
    return record


def _hub_info(record: dict[str, Any]) -> NatsServerInfo:
    cluster = None
    if "route_port" in record:
        cluster = ClusterMembership(
            server_name=str(record["name"]),
            route_port=int(record["route_port"]),
            monitor_port=int(record["monitor_port"]),
            peer_routes=tuple(record["peer_routes"]),
        )
    return NatsServerInfo(
        pid=int(record["pid"]),
        host=str(record["host"]),
        port=int(record["port"]),
        store_dir=Path(record["store"]),
        log_file=Path(record["log"]),
        cluster=cluster,
    )


def hub_status(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Each recorded hub with ``alive``: its process runs and its client port accepts."""
    return [
        {"name": hub["name"], "url": hub["url"], "pid": hub["pid"], "alive": accepts_clients(info)}
        for hub, info in ((hub, _hub_info(hub)) for hub in state.get("hubs", []))
    ]


def restart_hub(home: MeshHome, name: str) -> dict[str, Any]:
    """Start hub ``name`` again on its recorded ports and store, rejoining its cluster.

    Waits until it routes to every peer still alive; returns its new record.
    """
    state = _recorded_state(home)
    hubs: list[dict[str, Any]] = state["hubs"]
    index = _index_of(hubs, name, "hub")
    old = _hub_info(hubs[index])
    if accepts_clients(old):
        raise MeshError(f"hub {name} is still running (pid {old.pid})", code="hub_running")
    alive_peers = sum(
        1 for other in hubs if other["name"] != name and accepts_clients(_hub_info(other))
    )
    server = start_nats_server(
        old.store_dir,
        host=old.host,
        port=old.port,
        log_file=old.log_file,
        cluster=old.cluster,
        routes_needed=alive_peers if old.cluster else 0,
    )
    hubs[index] = _hub_record(server)
    home.write_state(state)
    return hubs[index]


def restart_node(home: MeshHome, name: str, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """Start node ``name`` again with its recorded home, region and price; wait until ready.

    Refused while its recorded process still runs. Returns its new record.
    """
    state = _recorded_state(home)
    nodes: list[dict[str, Any]] = state["nodes"]
    index = _index_of(nodes, name, "node")
    old = nodes[index]
    if is_process_alive(int(old["pid"])):
        raise MeshError(f"node {name} is still running (pid {old['pid']})", code="node_running")
    plan = NodePlan(
        name,
        str(old["region"]),
        float(old["price_per_cpu_hour"]),
        allow_network=bool(old.get("allow_network", False)),
    )
    record = _spawn_node(home, state["nats_url"], plan, sandbox=bool(state.get("sandbox", True)))
    nodes[index] = record
    home.write_state(state)
    wait_nodes_ready([record], timeout_s=timeout_s)
    return record


def _recorded_state(home: MeshHome) -> dict[str, Any]:
    state = home.read_state()
    if state is None:
        raise MeshError(f"no mesh is running for home {home.root}", code="no_mesh")
    return state


def _index_of(records: list[dict[str, Any]], name: str, what: str) -> int:
    for index, record in enumerate(records):
        if record.get("name") == name:
            return index
    raise MeshError(f"the mesh has no {what} named {name!r}", code=f"unknown_{what}")


def mesh_down(home: MeshHome) -> dict[str, Any]:
    """Stop every recorded process by pid and forget the mesh. Safe to repeat."""
    state = home.read_state()
    if state is None:
        return {"stopped": [], "was_running": False}
    stopped = []
    for node in state.get("nodes", []):
        if stop_process(int(node["pid"])):
            stopped.append(node["name"])
    for hub in state.get("hubs", []):
        if stop_process(int(hub["pid"])):
            stopped.append(hub["name"])
    if isinstance(state.get("chain"), dict):
        from computemesh.app.localchain import stop_local_chain

        if stop_local_chain(home, state["chain"]):
            stopped.append("anvil")
    home.state_file.unlink(missing_ok=True)
    return {"stopped": stopped, "was_running": True}
