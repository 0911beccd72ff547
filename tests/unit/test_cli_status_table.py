"""The node table of `cmesh status`: capacity, every rate, sandbox and network."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from computemesh.cli.mesh import nodes_table
from computemesh.models.market import Advertisement, Capacity, Hardware

DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"


def advert(*, network: bool) -> dict[str, Any]:
    node = Advertisement(
        hardware=Hardware(cpu_count=4, architecture="x86_64", memory_mb=8192, disk_mb=10_000),
        region="eu-west",
        executors=["process", "wasm"],
        price_per_cpu_hour=0.25,
        price_per_billion_fuel=0.0125,
        price_per_gb_out=0.75,
        price_per_gb_hour=0.5,
        sandboxed=True,
        network=network,
        free=Capacity(cpu=3, memory_mb=6000, disk_mb=10_000, gpu_count=0),
        version="0.1.0",
    )
    return {"did": DID, **node.model_dump(mode="json")}


def rendered(nodes: list[dict[str, Any]]) -> list[str]:
    console = Console(width=400, record=True)
    console.print(nodes_table(nodes, title="nodes"))
    return console.export_text().splitlines()


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.replace("┃", "│").split("│")[1:-1]]


def test_every_rate_and_the_network_policy_have_a_column() -> None:
    lines = rendered([advert(network=True), advert(network=False)])
    header = cells(next(line for line in lines if "price/" in line))
    rows = [cells(line) for line in lines if "eu-west" in line]
    columns = [dict(zip(header, row, strict=True)) for row in rows]
    assert columns[0]["price/cpu-hour"] == "0.25"
    assert columns[0]["price/billion fuel"] == "0.0125"
    assert columns[0]["price/GB out"] == "0.75"
    assert columns[0]["price/GB-hour"] == "0.5"
    assert columns[0]["cpu free/total"] == "3/4"
    assert [column["network"] for column in columns] == ["allowed", "no"]
    assert [column["sandboxed"] for column in columns] == ["yes", "yes"]
