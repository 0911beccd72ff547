"""`cmesh up`, `down`, `status` and `node start`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from computemesh.app.consumer import consumer_session
from computemesh.app.home import MeshHome
from computemesh.app.ledger_config import BACKENDS, Backend, bad_config
from computemesh.app.localmesh import hub_status, mesh_down, mesh_up
from computemesh.app.logs import configure_logging
from computemesh.app.provider import run_node
from computemesh.cli.context import home_of
from computemesh.cli.output import console, emit_json, err_console, reported_errors, short
from computemesh.models.errors import SpecError
from computemesh.models.market import RATE_FIELDS, RATE_UNITS
from computemesh.node.settings import NodeSettings

LedgerBackendOption = typer.Option(
    None,
    "--ledger",
    help="sqlite (embedded) or evm (a local anvil chain); default: the home's ledger.",
)
NatsOption = typer.Option(None, "--nats", help="NATS URL of the mesh (default: the local mesh).")
AllowNetworkOption = typer.Option(
    False, "--allow-network", help="Give network access to jobs that declare they need it."
)


def up(
    ctx: typer.Context,
    nodes: int = typer.Option(3, "--nodes", "-n", min=0, max=64, help="Provider processes."),
    hubs: int = typer.Option(
        1, "--hubs", min=1, max=7, help="NATS servers; more than one form a cluster."
    ),
    nats: str | None = typer.Option(
        None, "--nats", help="Join this NATS URL (or comma-separated URLs) instead."
    ),
    region: list[str] = typer.Option([], "--region", help="Regions to cycle through."),
    insecure_no_sandbox: bool = typer.Option(
        False, "--insecure-no-sandbox", help="Run jobs without bubblewrap (unsafe)."
    ),
    allow_network: bool = AllowNetworkOption,
    ledger: str | None = LedgerBackendOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start a local mesh in the background: nats-server (or a cluster) plus N provider nodes.

    With ``--ledger evm`` it also starts a local chain (anvil), deploys the settlement
    contract, funds the consumer and binds every account: jobs are paid on chain.
    """
    with reported_errors(as_json=as_json):
        home = home_of(ctx)
        if not as_json:
            err_console.print(f"starting a mesh of {nodes} node(s) in {home.mesh_dir} ...")
        state = mesh_up(
            home,
            nodes=nodes,
            hubs=hubs,
            nats_url=nats,
            regions=region or None,
            sandbox=not insecure_no_sandbox,
            allow_network=allow_network,
            ledger=ledger_backend(ledger),
        )
        if as_json:
            emit_json(state)
            return
        console.print(f"mesh up at {state['nats_url']}", highlight=False)
        if "chain" in state:
            chain = state["chain"]
            console.print(
                f"  anvil  pid {chain['pid']}  {chain['rpc_url']}  chain {chain['chain_id']}",
                highlight=False,
            )
        for hub in state["hubs"]:
            console.print(f"  {hub['name']}  pid {hub['pid']}  {hub['url']}", highlight=False)
        for node in state["nodes"]:
            console.print(
                f"  {node['name']}  pid {node['pid']}  {node['region']}"
                f"  {node['price_per_cpu_hour']}/cpu-h  {node['did']}",
                highlight=False,
            )
        console.print("stop it with `cmesh down`")


def ledger_backend(value: str | None) -> Backend | None:
    """``--ledger``: None, or one of ``BACKENDS``; ``bad_ledger_config`` otherwise."""
    if value is None:
        return None
    for backend in BACKENDS:
        if value == backend:
            return backend
    raise bad_config(f"unknown ledger backend {value!r}", hint=f"one of {BACKENDS}")


def down(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Stop the local mesh started by `cmesh up` (by process id)."""
    with reported_errors(as_json=as_json):
        outcome = mesh_down(home_of(ctx))
        if as_json:
            emit_json(outcome)
        elif not outcome["was_running"]:
            console.print("no mesh was running")
        else:
            console.print(f"stopped {', '.join(outcome['stopped']) or 'nothing still alive'}")


async def _discover(home: MeshHome, nats_url: str, window_s: float) -> list[dict[str, Any]]:
    async with consumer_session(home, nats_url, resume=False) as orchestrator:
        found = await orchestrator.discover(window_s=window_s)
    return [{"did": did, **advert.model_dump(mode="json")} for did, advert in sorted(found.items())]


def status(
    ctx: typer.Context,
    nats: str | None = NatsOption,
    window: float = typer.Option(1.0, "--window", min=0.1, max=30, help="Seconds to listen."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List the local hubs (alive or dead) and the nodes that answer on the mesh: their
    capacity, rates, and whether they sandbox jobs and allow network."""
    with reported_errors(as_json=as_json):
        home = home_of(ctx)
        url = home.nats_url(nats)
        state = home.read_state() if nats is None else None
        hubs = hub_status(state) if state else []
        nodes = asyncio.run(_discover(home, url, window))
        if as_json:
            emit_json({"nats_url": url, "hubs": hubs, "nodes": nodes})
            return
        if hubs:
            print_hubs(hubs)
        console.print(nodes_table(nodes, title=f"{len(nodes)} node(s) on {url}"))


def nodes_table(nodes: list[dict[str, Any]], *, title: str) -> Table:
    """One row per advertised node (``Advertisement`` as JSON): capacity, every rate, and
    whether it sandboxes jobs and gives network to jobs that declare it."""
    table = Table(title=title)
    for column in ("node", "region", "arch", "cpu free/total", "memory MB free", "gpus"):
        table.add_column(column)
    for name in RATE_FIELDS:
        table.add_column(f"price/{RATE_UNITS[name]}", justify="right")
    for column in ("sandboxed", "network"):
        table.add_column(column)
    for node in nodes:
        hardware, free = node["hardware"], node["free"]
        table.add_row(
            short(node["did"]),
            node["region"],
            hardware["architecture"],
            f"{free['cpu']:g}/{hardware['cpu_count']}",
            str(free["memory_mb"]),
            str(len(hardware["gpus"])),
            *(f"{node[name]:g}" for name in RATE_FIELDS),
            "yes" if node["sandboxed"] else "NO",
            "allowed" if node["network"] else "no",
        )
    return table


def print_hubs(hubs: list[dict[str, Any]]) -> None:
    alive = sum(hub["alive"] for hub in hubs)
    table = Table(title=f"{alive} of {len(hubs)} hub(s) alive")
    for column in ("hub", "url", "pid", "state"):
        table.add_column(column)
    for hub in hubs:
        state = "alive" if hub["alive"] else "[red]dead[/red]"
        table.add_row(hub["name"], hub["url"], str(hub["pid"]), state)
    console.print(table)


node_app = typer.Typer(help="Run a provider node.", no_args_is_help=True)


@node_app.command("start")
def node_start(
    ctx: typer.Context,
    nats: str | None = NatsOption,
    region: str = typer.Option("local", "--region", help="Region this node advertises."),
    price: float = typer.Option(0.10, "--price", min=0, help="Price per cpu-hour."),
    price_fuel: float | None = typer.Option(
        None,
        "--price-fuel",
        min=0,
        help="Price per billion units of wasm fuel (wasm jobs are priced by fuel); "
        "default: the cpu-hour price spread over a cpu-hour's fuel budget.",
    ),
    price_out: float = typer.Option(
        0.01, "--price-out", min=0, help="Price per GB (10^9 bytes) of output."
    ),
    price_memory: float = typer.Option(
        0.0, "--price-memory", min=0, help="Price per GB-hour of peak memory; 0: in the cpu price."
    ),
    heartbeat: float = typer.Option(1.0, "--heartbeat", min=0.1, help="Heartbeat seconds."),
    insecure_no_sandbox: bool = typer.Option(
        False, "--insecure-no-sandbox", help="Run jobs without bubblewrap (unsafe)."
    ),
    allow_network: bool = AllowNetworkOption,
    log_json: bool = typer.Option(False, "--log-json", help="Log one JSON object per line."),
    fault: str | None = typer.Option(
        None,
        "--fault",
        help="Misbehave on purpose, to test verification: wrong, wrong:P, collude:SECRET, late:S.",
    ),
) -> None:
    """Run a provider node in the foreground until Ctrl-C or SIGTERM."""
    configure_logging(json_lines=log_json)
    with reported_errors():
        home = home_of(ctx)
        try:
            settings = NodeSettings(
                home=Path(home.root),
                region=region,
                price_per_cpu_hour=price,
                price_per_billion_fuel=price_fuel,
                price_per_gb_out=price_out,
                price_per_gb_hour=price_memory,
                heartbeat_interval_s=heartbeat,
                sandbox=not insecure_no_sandbox,
                allow_network=allow_network,
                fault=fault,
            )
        except ValueError as exc:
            raise SpecError(f"node settings are invalid: {exc}") from exc
        asyncio.run(run_node(settings, home.nats_url(nats)))
