"""Verification policies on the in-memory mesh: real nodes, some of them faulty on purpose."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from computemesh.actor import Actor
from computemesh.cli.verify import verification_view
from computemesh.identity import Identity
from computemesh.models.job import JobSpec
from computemesh.models.market import Hardware
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.orchestrator.verify_flow import VerificationFlow, VerificationSettings
from computemesh.settlement import LedgerSettings, SqliteLedger
from computemesh.store import AllocationRepository, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from computemesh.verification import (
    FraudFinding,
    PolicyTuning,
    ReputationBook,
    check_fraud_finding,
    slash_through_ledger,
)
from tests.fakes import FakeExecutor

FAST = OrchestratorSettings(bid_window_s=0.3, placement_timeout_s=1.0, fetch_interval_s=0.5)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)
CORRECT = b"hello mesh"


@dataclass
class Mesh:
    nodes: list[ProviderNode]
    orchestrator: Orchestrator
    findings: list[FraudFinding]

    def node(self, did: str) -> ProviderNode:
        return next(node for node in self.nodes if node.did == did)


def make_node(hub: MemoryHub, home: Path, price: float, fault: str | None) -> ProviderNode:
    return ProviderNode(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
        settings=NodeSettings(home=home, price_per_cpu_hour=price, fault=fault),
        hardware=HARDWARE,
        allocations=AllocationRepository(open_database("sqlite://")),
        executors={"process": FakeExecutor()},
    )


MeshFactory = Callable[..., Any]


@pytest.fixture
async def make_mesh(tmp_path: Path) -> AsyncIterator[MeshFactory]:
    """A mesh of nodes priced 0.1, 0.2, ... with the given faults (None: honest)."""
    started: list[Mesh] = []

    async def build(faults: list[str | None], tuning: PolicyTuning | None = None) -> Mesh:
        hub = MemoryHub()
        nodes = [
            make_node(hub, tmp_path / f"n{i}", 0.1 * (i + 1), fault)
            for i, fault in enumerate(faults)
        ]
        for node in nodes:
            await node.start()
        jobs = JobRepository(open_database("sqlite://"))
        identity = Identity.generate()
        findings: list[FraudFinding] = []
        flow = VerificationFlow(
            judge=identity,
            reputation=ReputationBook(jobs.reputation),
            fraud=jobs.fraud,
            settings=VerificationSettings(seed="test-seed", tuning=tuning or PolicyTuning()),
            on_fraud=findings.append,
        )
        orchestrator = Orchestrator(
            actor=Actor(identity=identity, transport=MemoryTransport(hub)),
            jobs=jobs,
            settings=FAST,
            verification=flow,
        )
        await orchestrator.start()
        await orchestrator.discover(window_s=0.2)
        mesh = Mesh(nodes, orchestrator, findings)
        started.append(mesh)
        return mesh

    yield build
    for mesh in started:
        await mesh.orchestrator.stop()
        for node in mesh.nodes:
            await node.stop()


def job(verification: dict[str, Any] | None = None, **overrides: object) -> JobSpec:
    data: dict[str, Any] = {
        "name": "echo",
        "command": ["cat", "in.txt"],
        "inputs": [{"path": "in.txt", "content": CORRECT.decode()}],
        "outputs": ["out.txt"],
        **overrides,
    }
    if verification is not None:
        data["verification"] = verification
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


async def test_redundant_outvotes_a_liar_records_fraud_and_excludes_it(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh(["wrong", None, None])
    liar = mesh.nodes[0].did
    record = await mesh.orchestrator.run(job({"policy": "redundant", "k": 2}), timeout=10)
    assert record.status == "completed" and record.verified is True
    assert len(record.results) == 3
    (stored,) = mesh.orchestrator.jobs.fraud.for_job(record.job_id)
    assert stored["provider"] == liar
    winners = [doc for doc in record.results if doc["body"]["provider"] != liar]
    assert {doc["body"]["outputs"][0]["sha256"] for doc in winners} == {
        winners[0]["body"]["outputs"][0]["sha256"]
    }
    assert base64.b64decode(winners[0]["body"]["outputs"][0]["content_b64"]) == CORRECT
    assert [finding.provider for finding in mesh.findings] == [liar]
    body = check_fraud_finding(mesh.findings[0])
    assert body["losing_result"] == mesh.findings[0].evidence[0]
    assert mesh.orchestrator.verification.reputation_of(liar) == 0.0
    view = verification_view(record, mesh.orchestrator.jobs.fraud.for_job(record.job_id))
    assert [replica["lost"] for replica in view["replicas"]].count(True) == 1
    assert view["fraud_records"][0]["verdict"]["signer"] == mesh.orchestrator.actor.did

    again = await mesh.orchestrator.run(job({"policy": "redundant", "k": 2}), timeout=10)
    assert again.status == "completed" and again.verified is True
    assert liar not in {contract["terms"]["provider"] for contract in again.contracts}


async def test_adaptive_checks_a_provider_with_no_record(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh(["wrong", None, None])
    liar = mesh.nodes[0].did
    record = await mesh.orchestrator.run(job({"policy": "adaptive"}), timeout=10)
    assert record.status == "completed" and record.verified is True
    assert [finding.provider for finding in mesh.findings] == [liar]
    bodies = [doc["body"] for doc in record.results if doc["body"]["provider"] != liar]
    assert all(base64.b64decode(b["outputs"][0]["content_b64"]) == CORRECT for b in bodies)


async def test_adaptive_replicates_less_as_the_record_grows(make_mesh: MeshFactory) -> None:
    # Job ids are random, so the draws are too: a short half-record makes the decay steep
    # enough that four replicated jobs in a row after the first four would take odds < 1e-4.
    mesh = await make_mesh([None, None, None], tuning=PolicyTuning(adaptive_half_record=0.5))
    replicas = []
    for _ in range(8):
        record = await mesh.orchestrator.run(job({"policy": "adaptive"}), timeout=10)
        assert record.status == "completed" and record.verified is True
        replicas.append(len(record.results))
    assert replicas[0] == 2  # never checked: always replicated
    assert sum(replicas[-4:]) < 2 * 4
    assert mesh.findings == []
    cheapest = mesh.nodes[0].did
    record_of_cheapest = mesh.orchestrator.verification.reputation.record(cheapest, "process")
    assert record_of_cheapest.verified >= 0.99  # one confirmed result at least, barely decayed


async def test_audit_rate_one_re_executes_every_result(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh([None, None])
    record = await mesh.orchestrator.run(job({"policy": "audit", "audit_rate": 1.0}), timeout=10)
    assert record.status == "completed" and record.verified is True
    assert len({doc["body"]["provider"] for doc in record.results}) == 2


async def test_audit_rate_zero_accepts_unchecked(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh([None, None])
    record = await mesh.orchestrator.run(job({"policy": "audit", "audit_rate": 0.0}), timeout=10)
    assert record.status == "completed" and record.verified is True
    assert len(record.results) == 1


async def test_no_quorum_within_n_fails_unverified(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh(["wrong", "wrong", None])
    record = await mesh.orchestrator.run(job({"policy": "redundant", "k": 2, "n": 2}), timeout=10)
    assert record.status == "failed" and record.verified is False
    assert "no quorum within 2 replicas" in record.reason
    assert mesh.findings == []


async def test_colluding_pair_gives_the_same_wrong_answer(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh(["collude:s3cret", "collude:s3cret", None])
    job_id = mesh.orchestrator.submit(job({"policy": "redundant", "k": 2}))
    contracts = await mesh.orchestrator.place(job_id)
    for node in mesh.nodes:
        await node.wait_idle()
    hashes = set()
    for contract in contracts:
        node = mesh.node(contract["terms"]["provider"])
        stored = node.allocations.get(contract["terms"]["contract_id"])
        assert stored is not None and stored.result is not None
        hashes.add(stored.result["body"]["outputs"][0]["sha256"])
    assert len(hashes) == 1  # the partners agree with each other, not with the truth
    (output,) = hashes
    assert output != hashlib.sha256(CORRECT).hexdigest()
    record = await mesh.orchestrator.await_outcome(job_id, timeout=10)
    assert record.status == "completed"  # a colluding majority is what reputation must catch


async def test_late_node_delivers_a_correct_result_later(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh(["late:0.3"])
    record = await mesh.orchestrator.run(job(), timeout=10)
    assert record.status == "completed" and record.verified is True
    (result,) = record.results
    assert base64.b64decode(result["body"]["outputs"][0]["content_b64"]) == CORRECT


async def test_fraud_slashes_stake_through_the_ledger(
    make_mesh: MeshFactory, tmp_path: Path
) -> None:
    mesh = await make_mesh(["wrong", None, None])
    liar = mesh.nodes[0].did
    arbiter, treasury = Identity.generate(), Identity.generate()
    ledger = SqliteLedger.open(
        tmp_path / "ledger.db",
        Identity.generate(),
        LedgerSettings(treasury=treasury.did, arbiters=frozenset({arbiter.did})),
    )
    ledger.deposit(liar, 5_000_000, deposit_id="d1")
    ledger.stake(liar, 5_000_000, stake_id="s1")
    mesh.orchestrator.verification.on_fraud = slash_through_ledger(
        ledger, arbiter, amount=2_000_000
    )
    record = await mesh.orchestrator.run(job({"policy": "redundant"}), timeout=10)
    assert record.verified is True
    assert ledger.balance(liar).staked == 3_000_000


async def test_policy_none_keeps_a_single_unchecked_result(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh(["wrong", None])
    record = await mesh.orchestrator.run(job(), timeout=10)
    assert record.status == "completed"
    assert len(record.results) == 1
    assert mesh.orchestrator.jobs.fraud.for_job(record.job_id) == []
