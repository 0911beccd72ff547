"""Pure parts of the cluster support: server URL lists and cluster plans."""

from __future__ import annotations

import pytest

from computemesh.transport.nats import server_urls
from computemesh.transport.natsserver import plan_cluster


def test_server_urls_split_a_comma_separated_list() -> None:
    assert server_urls("nats://a:1, nats://b:2,,nats://c:3") == [
        "nats://a:1",
        "nats://b:2",
        "nats://c:3",
    ]
    assert server_urls(["nats://a:1"]) == ["nats://a:1"]


@pytest.mark.parametrize("empty", ["", " , ", []])
def test_server_urls_need_one(empty: str | list[str]) -> None:
    with pytest.raises(ValueError):
        server_urls(empty)


def test_a_cluster_plan_routes_each_server_to_every_other() -> None:
    plan = plan_cluster(3)

    names = [membership.server_name for _, membership in plan]
    assert names == ["hub-1", "hub-2", "hub-3"]
    routes = {f"nats-route://127.0.0.1:{m.route_port}" for _, m in plan}
    for _, membership in plan:
        own = f"nats-route://127.0.0.1:{membership.route_port}"
        assert set(membership.peer_routes) == routes - {own}
    ports = [port for port, _ in plan] + [m.route_port for _, m in plan]
    ports += [m.monitor_port for _, m in plan]
    assert len(set(ports)) == len(ports)


def test_a_cluster_needs_two_servers() -> None:
    with pytest.raises(ValueError):
        plan_cluster(1)
