"""Network access: declared in the spec, allowed per node, advertised, matched, refused
with a reason, and given by the sandbox or the container only to such a job on such a node."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from computemesh.actor import Actor
from computemesh.app.localmesh import NodePlan, node_command, plan_nodes
from computemesh.executor import ExecutionRequest, ProcessExecutor, SandboxLimits
from computemesh.executor.base import ExecutionHandle
from computemesh.executor.docker import DockerExecutor, container_config
from computemesh.executor.sandbox import (
    HostLayout,
    SandboxConfig,
    build_bwrap_argv,
    synthetic_etc_files,
)
from computemesh.identity import Identity
from computemesh.matching import NodeIndex, explain, match_job, unmet_requirements
from computemesh.models.errors import ExecutionError
from computemesh.models.job import JobSpec
from computemesh.models.market import Advertisement, Hardware
from computemesh.models.validation import job_spec_schema
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.store import AllocationRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from tests.fakes import FakeExecutor
from tests.unit.test_matching_fleets import DIDS

OPEN, CLOSED = DIDS[:2]
NETWORK_REASON = "network: the job needs network access, the node does not allow it"
LIMITS = SandboxLimits(wall_time_s=5, cpu_time_s=5, memory_mb=64)


def spec(**changes: object) -> JobSpec:
    return JobSpec.model_validate({"name": "t", "command": ["true"]} | changes)


def advert(*, network: bool) -> Advertisement:
    return Advertisement.model_validate(
        {
            "hardware": {
                "cpu_count": 4,
                "architecture": "x86_64",
                "memory_mb": 8192,
                "disk_mb": 10_000,
            },
            "region": "eu-west",
            "executors": ["process"],
            "price_per_cpu_hour": 0.1,
            "sandboxed": True,
            "free": {"cpu": 4, "memory_mb": 8192, "disk_mb": 10_000, "gpu_count": 0},
            "version": "0.1.0",
            "network": network,
        }
    )


# The spec -----------------------------------------------------------------------------------


def test_network_is_off_by_default_and_in_the_schema() -> None:
    assert spec().network is False
    assert spec(network=True).network is True
    assert spec(executor="docker", image="alpine:3", network=True).network is True
    assert job_spec_schema()["properties"]["network"]["type"] == "boolean"


@pytest.mark.parametrize(
    "bad",
    [
        {"executor": "wasm", "network": True},
        {"executor": "onnx", "network": True},
        {"network": "sometimes"},
    ],
)
def test_network_is_refused_where_it_cannot_apply(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as raised:
        spec(**bad)
    assert "network" in str(raised.value)


# Matching -----------------------------------------------------------------------------------


def test_a_network_job_fits_only_nodes_that_allow_it() -> None:
    assert unmet_requirements(spec(network=True), advert(network=True), OPEN) == []
    assert unmet_requirements(spec(network=True), advert(network=False), CLOSED) == [NETWORK_REASON]
    assert unmet_requirements(spec(), advert(network=False), CLOSED) == []


def test_the_index_filters_network_jobs_and_explains_who_was_removed() -> None:
    index = NodeIndex()
    assert index.upsert(OPEN, advert(network=True), seen_at=0.0) == []
    assert index.upsert(CLOSED, advert(network=False), seen_at=0.0) == []
    assert [c.provider for c in match_job(index, spec(network=True))] == [OPEN]
    assert len(match_job(index, spec())) == 2
    why = explain(index, spec(network=True, replicas=2))
    assert not why.placeable
    network = next(effect for effect in why.effects if effect.name == "network")
    assert (network.alone, network.remaining) == (1, 1)
    misses = {miss.provider: miss.failed for miss in why.nearest}
    assert misses[CLOSED] == (("network", NETWORK_REASON),)


# The provider node --------------------------------------------------------------------------


def node(tmp_path: Path, *, allow_network: bool) -> ProviderNode:
    return ProviderNode(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(MemoryHub())),
        settings=NodeSettings(home=tmp_path, allow_network=allow_network),
        hardware=Hardware(cpu_count=2, architecture="x86_64", memory_mb=2048, disk_mb=1000),
        allocations=AllocationRepository(open_database("sqlite://")),
        executors={"process": FakeExecutor()},
    )


def test_a_node_advertises_network_only_when_allowed_and_refuses_with_the_reason(
    tmp_path: Path,
) -> None:
    assert NodeSettings(home=tmp_path).allow_network is False
    closed = node(tmp_path / "closed", allow_network=False)
    assert closed.advertisement().network is False
    assert closed.refusal_reasons(spec(network=True)) == [NETWORK_REASON]
    assert closed.refusal_reasons(spec()) == []
    open_ = node(tmp_path / "open", allow_network=True)
    assert open_.advertisement().network is True
    assert open_.refusal_reasons(spec(network=True)) == []


def test_the_local_mesh_passes_allow_network_to_its_nodes(tmp_path: Path) -> None:
    plans = plan_nodes(2, allow_network=True)
    assert all(plan.allow_network for plan in plans)
    command = node_command(tmp_path, "nats://127.0.0.1:4222", plans[0], sandbox=True)
    assert "--allow-network" in command
    closed = NodePlan(name="n", region="eu-west", price_per_cpu_hour=1.0)
    assert "--allow-network" not in node_command(tmp_path, "nats://x", closed, sandbox=True)


# The executors ------------------------------------------------------------------------------


def request(*, network: bool) -> ExecutionRequest:
    return ExecutionRequest(
        job_id="j1",
        command=["true"],
        env={},
        inputs=[],
        outputs=[],
        limits=LIMITS,
        image="alpine:3",
        network=network,
    )


def sandbox_config(*, share_network: bool) -> SandboxConfig:
    return SandboxConfig(
        bwrap="/usr/bin/bwrap",
        work_source="/srv/job/work",
        command=["true"],
        env={},
        layout=HostLayout(
            root_entries=(), etc_entries=(), network_etc_entries=("/etc/resolv.conf",)
        ),
        tmpfs_bytes=1 << 20,
        info_fd=3,
        share_network=share_network,
    )


def test_bubblewrap_shares_the_network_only_when_told_to() -> None:
    closed = build_bwrap_argv(sandbox_config(share_network=False))
    assert "--share-net" not in closed
    assert "/etc/resolv.conf" not in closed
    shared = build_bwrap_argv(sandbox_config(share_network=True))
    assert shared.index("--share-net") == shared.index("--unshare-all") + 1
    assert shared[shared.index("/etc/resolv.conf") - 1] == "--ro-bind"
    assert b"hosts: files\n" in synthetic_etc_files()["/etc/nsswitch.conf"]
    assert b"hosts: files dns\n" in synthetic_etc_files(network=True)["/etc/nsswitch.conf"]


async def test_the_process_executor_refuses_network_it_does_not_allow(tmp_path: Path) -> None:
    executor = ProcessExecutor(sandbox=False)
    with pytest.raises(ExecutionError) as refused:
        await executor.prepare(request(network=True), tmp_path)
    assert refused.value.code == "network_not_allowed"
    assert not tmp_path.joinpath("j1").exists()


def docker_handle(tmp_path: Path, *, network: bool) -> ExecutionHandle:
    return ExecutionHandle(request(network=network), job_dir=tmp_path, work_dir=tmp_path / "w")


def test_containers_get_a_network_only_for_such_a_job_on_such_a_node(tmp_path: Path) -> None:
    wants, plain = docker_handle(tmp_path, network=True), docker_handle(tmp_path, network=False)
    assert container_config(wants, allow_network=True)["network_mode"] == "bridge"
    assert container_config(wants)["network_mode"] == "none"
    assert container_config(plain, allow_network=True)["network_mode"] == "none"


async def test_the_docker_executor_refuses_network_it_does_not_allow(tmp_path: Path) -> None:
    with pytest.raises(ExecutionError) as refused:
        await DockerExecutor(client=object()).prepare(request(network=True), tmp_path)
    assert refused.value.code == "network_not_allowed"
    allowed = DockerExecutor(client=object(), allow_network=True)
    handle = await allowed.prepare(request(network=True), tmp_path)
    assert handle.request.network
    await allowed.cleanup(handle)
