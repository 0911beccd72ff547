"""Without bubblewrap a node refuses jobs, unless started with --insecure-no-sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from computemesh.actor import Actor
from computemesh.app import provider as provider_app
from computemesh.identity import Identity
from computemesh.models.job import JobSpec
from computemesh.models.market import Hardware
from computemesh.node.provider import NO_SANDBOX_REASON, ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.store import AllocationRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport


def test_missing_bubblewrap_means_no_process_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("computemesh.executor.process.find_bwrap", lambda path=None: None)
    sandboxed = provider_app.build_executors(NodeSettings(home=tmp_path, sandbox=True))
    insecure = provider_app.build_executors(NodeSettings(home=tmp_path, sandbox=False))
    assert "process" not in sandboxed
    assert "process" in insecure


def test_node_without_executors_refuses_and_says_why(tmp_path: Path) -> None:
    node = ProviderNode(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(MemoryHub())),
        settings=NodeSettings(home=tmp_path),
        hardware=Hardware(cpu_count=2, architecture="x86_64", memory_mb=2048, disk_mb=1000),
        allocations=AllocationRepository(open_database("sqlite://")),
        executors={},
    )
    spec = JobSpec.model_validate({"name": "t", "command": ["true"]})
    assert node.refusal_reasons(spec) == [NO_SANDBOX_REASON]
    advert = node.advertisement()
    assert advert.executors == []
    assert advert.sandboxed is False
