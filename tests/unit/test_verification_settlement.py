"""Verification joined to placement and settlement, on the in-memory mesh.

Real nodes (some lying on purpose), a real orchestrator and one SqliteLedger file shared
with the nodes: a result the policy proves wrong is refunded, never paid, and its provider
slashed; the queue and the verdicts place the replicas the policy needs; the consumer's own
record of a provider, not what the provider advertises, decides ``min_reputation``; the
model creator named in the spec is paid its share.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from computemesh.actor import Actor, Inbound, behaviours
from computemesh.app.home import MeshHome
from computemesh.app.ledger import create_local_ledger
from computemesh.executor import ExecutionResult
from computemesh.identity import Identity, load_or_create_identity
from computemesh.matching import NodeIndex, match_job
from computemesh.models.errors import NoProviderError
from computemesh.models.job import JobSpec
from computemesh.models.market import (
    Advertisement,
    Capacity,
    ContractTerms,
    Hardware,
    ResourceUsage,
)
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.orchestrator.verify_flow import VerificationSettings, consumer_verification
from computemesh.settlement import LedgerSettings, SqliteLedger, credits_to_units
from computemesh.settlement.pricing import charge_for_usage
from computemesh.store import AllocationRepository, JobRecord, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from computemesh.verification import FraudFinding, slash_through_ledger
from tests.fakes import FakeExecutor, FakeHandle

FAST = OrchestratorSettings(bid_window_s=0.3, placement_timeout_s=1.0, fetch_interval_s=0.5)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)
CPU_SECONDS = 36.0
DEPOSIT = credits_to_units(100)
STAKE = credits_to_units(5)
SLASH = credits_to_units(1)
REDUNDANT = {"policy": "redundant", "k": 2}


@dataclass
class MeteredExecutor(FakeExecutor):
    """FakeExecutor whose runs report ``CPU_SECONDS`` of CPU, so each result has a price."""

    async def wait(self, handle: FakeHandle) -> ExecutionResult:
        ended = await super().wait(handle)
        usage = ResourceUsage(wall_s=CPU_SECONDS, cpu_s=CPU_SECONDS, max_rss_kb=2048)
        return dataclasses.replace(ended, usage=usage)


class BoastingNode(ProviderNode):
    """A node that advertises a perfect reputation, whatever anyone has seen of it."""

    def advertisement(self) -> Advertisement:
        return super().advertisement().model_copy(update={"reputation": 1.0})


@dataclass
class Mesh:
    ledger: SqliteLedger
    consumer: Identity
    treasury: str
    nodes: list[ProviderNode]
    orchestrator: Orchestrator
    asked: dict[str, int]
    """Bid requests each node received."""
    running: bool = True

    def node(self, did: str) -> ProviderNode:
        return next(node for node in self.nodes if node.did == did)


MeshFactory = Callable[..., Awaitable[Mesh]]


def count_bid_requests(node: ProviderNode, asked: dict[str, int]) -> None:
    async def counting(inbound: Inbound) -> None:
        asked[node.did] = asked.get(node.did, 0) + 1
        await node.on_bid_request(inbound)

    node.actor.register(behaviours.BID_REQUEST, counting)


@pytest.fixture
async def make_mesh(tmp_path: Path) -> AsyncIterator[MeshFactory]:
    """Nodes priced 0.1, 0.2, ... with the given faults (None: honest), each advertising
    reputation 1.0; the consumer is the ledger's author and its arbiter."""
    started: list[Mesh] = []

    async def build(faults: list[str | None]) -> Mesh:
        hub = MemoryHub()
        consumer, treasury = Identity.generate(), Identity.generate()
        path = tmp_path / f"ledger-{len(started)}.db"
        settings = LedgerSettings(treasury=treasury.did, arbiters=frozenset({consumer.did}))
        ledger = SqliteLedger.open(path, consumer, settings)
        ledger.deposit(consumer.did, DEPOSIT, deposit_id="test-funds")
        nodes: list[ProviderNode] = []
        asked: dict[str, int] = {}
        for number, fault in enumerate(faults):
            identity = Identity.generate()
            node = BoastingNode(
                actor=Actor(identity=identity, transport=MemoryTransport(hub)),
                settings=NodeSettings(
                    home=tmp_path / f"m{len(started)}n{number}",
                    price_per_cpu_hour=round(0.1 * (number + 1), 1),
                    fault=fault,
                ),
                hardware=HARDWARE,
                allocations=AllocationRepository(open_database("sqlite://")),
                executors={"process": MeteredExecutor()},
                settlement=SqliteLedger.open(path, identity),
            )
            count_bid_requests(node, asked)
            await node.start()
            nodes.append(node)
        jobs = JobRepository(open_database("sqlite://"))
        orchestrator = Orchestrator(
            actor=Actor(identity=consumer, transport=MemoryTransport(hub)),
            jobs=jobs,
            settings=FAST,
            ledger=ledger,
            verification=consumer_verification(
                jobs, consumer, ledger, settings=VerificationSettings(seed="test-seed")
            ),
        )
        await orchestrator.start()
        await orchestrator.discover(window_s=0.2)
        mesh = Mesh(ledger, consumer, treasury.did, nodes, orchestrator, asked)
        started.append(mesh)
        return mesh

    yield build
    for mesh in started:
        if mesh.running:
            await mesh.orchestrator.stop()
        for node in mesh.nodes:
            await node.stop()


def job(verification: dict[str, Any] | None = None, **overrides: object) -> JobSpec:
    data: dict[str, Any] = {
        "name": "echo",
        "command": ["cat", "in.txt"],
        "inputs": [{"path": "in.txt", "content": "hello mesh"}],
        "outputs": ["out.txt"],
        **overrides,
    }
    if verification is not None:
        data["verification"] = verification
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


def contracts_by_provider(record: JobRecord) -> dict[str, ContractTerms]:
    terms = [ContractTerms.model_validate(contract["terms"]) for contract in record.contracts]
    return {item.provider: item for item in terms}


def price_of(record: JobRecord, terms: ContractTerms) -> int:
    (document,) = [d for d in record.results if d["body"]["contract_id"] == terms.contract_id]
    return charge_for_usage(ResourceUsage.model_validate(document["body"]["usage"]), terms)


async def until_final(mesh: Mesh, job_id: str) -> JobRecord:
    """The job once final, waiting for the results that arrive by themselves."""
    for _ in range(200):
        record = mesh.orchestrator.jobs.get(job_id)
        if record.is_final:
            return record
        await asyncio.sleep(0.05)
    return mesh.orchestrator.jobs.get(job_id)


# Lost results are not paid ------------------------------------------------------------------


async def test_a_liar_outvoted_is_refunded_and_slashed_while_honest_providers_are_paid(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh(["wrong", None, None])
    liar = mesh.nodes[0].did
    mesh.ledger.deposit(liar, STAKE, deposit_id="liar-funds")
    mesh.ledger.stake(liar, STAKE, stake_id="liar-stake")

    record = await mesh.orchestrator.run(job(REDUNDANT), timeout=10)

    assert (record.status, record.verified) == ("completed", True)
    terms = contracts_by_provider(record)
    assert set(terms) == {node.did for node in mesh.nodes}
    spent = 0
    for honest in mesh.nodes[1:]:
        price = price_of(record, terms[honest.did])
        assert price > 0
        assert mesh.ledger.balance(honest.did).available == mesh.ledger.split.shares(price).provider
        spent += price
    lost = mesh.ledger.escrow(terms[liar].contract_id)
    assert lost.closed and lost.released == 0 and lost.refunded == lost.locked
    assert mesh.ledger.balance(liar).available == 0
    assert mesh.ledger.balance(liar).staked == STAKE - SLASH
    assert mesh.ledger.balance(mesh.consumer.did).available == DEPOSIT - spent
    assert not [r for r in mesh.ledger.history(liar) if r.op == "release"]
    (slash,) = [r for r in mesh.ledger.history(liar) if r.op == "slash"]
    assert slash.body["contract_id"] == terms[liar].contract_id
    assert mesh.ledger.verify().ok


async def test_a_liar_without_stake_is_refunded_and_nothing_is_slashed(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh(["wrong", None, None])
    liar = mesh.nodes[0].did
    record = await mesh.orchestrator.run(job(REDUNDANT), timeout=10)
    assert (record.status, record.verified) == ("completed", True)
    escrow = mesh.ledger.escrow(contracts_by_provider(record)[liar].contract_id)
    assert escrow.closed and escrow.released == 0
    assert not {"release", "slash"} & {r.op for r in mesh.ledger.history(liar)}
    assert mesh.ledger.balance(liar).available == 0
    assert liar in mesh.orchestrator.verification.excluded()


def test_a_slash_beyond_the_stake_takes_what_there_is(tmp_path: Path) -> None:
    arbiter, provider = Identity.generate(), Identity.generate()
    settings = LedgerSettings(treasury=arbiter.did, arbiters=frozenset({arbiter.did}))
    ledger = SqliteLedger.open(tmp_path / "ledger.db", arbiter, settings)
    ledger.deposit(provider.did, 300, deposit_id="d")
    ledger.stake(provider.did, 300, stake_id="s")
    slash_through_ledger(ledger, arbiter, amount=SLASH)(_finding(provider.did))
    assert ledger.balance(provider.did).staked == 0
    assert ledger.balance(arbiter.did).available == 300


def test_a_consumer_that_is_no_arbiter_cannot_slash(tmp_path: Path) -> None:
    author, provider = Identity.generate(), Identity.generate()
    ledger = SqliteLedger.open(tmp_path / "ledger.db", author, LedgerSettings(treasury=author.did))
    ledger.deposit(provider.did, STAKE, deposit_id="d")
    ledger.stake(provider.did, STAKE, stake_id="s")
    slash_through_ledger(ledger, author, amount=SLASH)(_finding(provider.did))
    assert ledger.balance(provider.did).staked == STAKE


def _finding(provider: str) -> FraudFinding:
    losing = {"kind": "job-result", "body": {"n": 1}, "signer": provider, "signature": "x"}
    winning = {"kind": "job-result", "body": {"n": 2}, "signer": provider, "signature": "y"}
    return FraudFinding(
        job_id="cd" * 16,
        contract_id="ef" * 16,
        provider=provider,
        executor="process",
        losing_result=losing,
        winning_results=(winning,),
        verdict={},
    )


def test_the_local_ledger_makes_its_consumer_the_arbiter(tmp_path: Path) -> None:
    home = MeshHome(tmp_path / "home")
    path = create_local_ledger(home)
    consumer = load_or_create_identity(home.root)
    ledger = SqliteLedger.open(path, consumer)
    assert ledger.settings.arbiters == frozenset({consumer.did})
    assert ledger.treasury == load_or_create_identity(home.treasury_home).did


# Replicas: the queue and the verdicts --------------------------------------------------------


async def test_the_queue_places_the_replicas_the_policy_needs(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh([None, None, None])
    orchestrator = mesh.orchestrator
    job_id = orchestrator.submit(job(REDUNDANT))
    orchestrator.jobs.queue.enqueue(job_id, priority=0, reason="capacity was taken")
    orchestrator.jobs.set_status(job_id, "queued", "capacity was taken")
    await orchestrator.drain_queue()
    record = await orchestrator.await_outcome(job_id, timeout=5)
    assert (record.status, record.verified) == ("completed", True), record.reason
    assert len(contracts_by_provider(record)) == 2  # the policy's two, on distinct providers
    assert orchestrator.queue_position(job_id) is None


async def test_extra_replicas_are_placed_with_nobody_awaiting_the_job(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh(["wrong", None, None])
    liar = mesh.nodes[0].did
    job_id = mesh.orchestrator.submit(job(REDUNDANT))
    placed = await mesh.orchestrator.place(job_id)
    assert len(placed) == 2  # the liar and one honest node disagree: a third is needed
    record = await until_final(mesh, job_id)
    assert (record.status, record.verified) == ("completed", True), record.reason
    assert set(contracts_by_provider(record)) == {node.did for node in mesh.nodes}
    assert liar in mesh.orchestrator.verification.excluded()


async def test_stop_cancels_a_placement_of_extra_replicas(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh(["wrong", None, None])
    silent = mesh.nodes.pop()  # still indexed, but it will never bid for the third replica
    await silent.stop()
    job_id = mesh.orchestrator.submit(job(REDUNDANT))
    assert len(await mesh.orchestrator.place(job_id)) == 2
    for _ in range(200):
        if _placing_more():
            break
        await asyncio.sleep(0.01)
    assert _placing_more()
    await mesh.orchestrator.stop()
    mesh.running = False
    assert not _placing_more()
    assert mesh.orchestrator.jobs.get(job_id).status != "completed"


def _placing_more() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and "place_more_replicas" in repr(task.get_coro())
    ]


# Reputation in matching ----------------------------------------------------------------------


async def test_a_provider_caught_lying_is_never_asked_again_whatever_it_advertises(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh(["wrong", None, None])
    liar = mesh.nodes[0].did
    first = await mesh.orchestrator.run(job(REDUNDANT), timeout=10)
    assert first.verified is True and liar in mesh.orchestrator.verification.excluded()
    assert mesh.orchestrator.view.index.advertisement(liar).reputation == 1.0
    asked_before = mesh.asked.get(liar, 0)

    later = await mesh.orchestrator.run(job(), timeout=10)

    assert later.status == "completed"
    assert liar not in contracts_by_provider(later)
    assert mesh.asked.get(liar, 0) == asked_before
    (candidate,) = [
        c for c in match_job(mesh.orchestrator.view.index, job(), limit=10) if c.provider == liar
    ]
    assert candidate.breakdown.qualities["reputation"] == 0.0


async def test_a_bid_from_an_excluded_provider_is_set_aside_with_the_reason(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh(["wrong", None, None])
    liar = mesh.nodes[0].did
    await mesh.orchestrator.run(job(REDUNDANT), timeout=10)
    job_id = mesh.orchestrator.submit(job())
    with pytest.raises(NoProviderError) as caught:
        await mesh.orchestrator.bid_from(job_id, liar)
    reasons = caught.value.reasons
    assert any("bid set aside: excluded after a proven fraud" in line for line in reasons)


async def test_min_reputation_is_judged_on_the_consumers_record_not_the_advert(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh([None, None])
    record = await mesh.orchestrator.run(job(constraints={"min_reputation": 0.6}), timeout=10)
    assert record.status == "no_provider"
    assert record.contracts == []
    lines = record.reason.splitlines()
    assert "index: reputation removes 2 of 2 node(s), 0 left after it" in lines
    assert sum("bid set aside: reputation: 0.5 below min 0.6" in line for line in lines) == 2


async def test_verified_work_raises_the_reputation_matching_sees(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh([None, None])
    index = mesh.orchestrator.view.index
    assert {index.reputation[index.row_of(node.did)] for node in mesh.nodes} == {0.5}
    record = await mesh.orchestrator.run(job(REDUNDANT), timeout=10)
    assert record.verified is True
    for node in mesh.nodes:
        seen = mesh.orchestrator.verification.reputation_of(node.did)
        assert seen > 0.5
        assert index.reputation[index.row_of(node.did)] == pytest.approx(seen)


def test_the_index_uses_the_reputation_it_is_given_over_the_advertised_one() -> None:
    did = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    advert = Advertisement(
        hardware=HARDWARE,
        region="eu-west",
        executors=["process"],
        price_per_cpu_hour=0.1,
        sandboxed=True,
        free=Capacity(cpu=2, memory_mb=4096, disk_mb=10_000, gpu_count=0),
        version="0.1.0",
        reputation=1.0,
    )
    picky = JobSpec.model_validate(
        {"name": "t", "command": ["true"], "constraints": {"min_reputation": 0.5}}
    )
    index = NodeIndex()
    index.upsert(did, advert, seen_at=1.0)
    index.set_reputation(did, 0.2)
    assert match_job(index, picky) == []
    index.upsert(did, advert, seen_at=2.0)  # re-advertising keeps the consumer's view
    assert match_job(index, picky) == []
    index.remove(did)
    index.upsert(did, advert, seen_at=3.0)
    assert match_job(index, picky) == []
    index.set_reputation(did, None)
    (candidate,) = match_job(index, picky)
    assert candidate.breakdown.qualities["reputation"] == 1.0
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        index.set_reputation(did, 1.5)


# The model creator's share -------------------------------------------------------------------


async def test_the_model_creator_named_in_the_spec_is_paid_its_share(
    make_mesh: MeshFactory,
) -> None:
    mesh = await make_mesh([None])
    creator = Identity.generate().did
    record = await mesh.orchestrator.run(job(model_creator=creator), timeout=10)
    assert (record.status, record.verified) == ("completed", True)
    (terms,) = contracts_by_provider(record).values()
    price = price_of(record, terms)
    assert price == 1000  # 0.1 credits per cpu-hour x 36 cpu-seconds
    assert mesh.ledger.balance(mesh.nodes[0].did).available == 800  # 80 %
    assert mesh.ledger.balance(mesh.treasury).available == 150  # 15 %
    assert mesh.ledger.balance(creator).available == 50  # 5 %
    (release,) = [r for r in mesh.ledger.history(creator) if r.op == "release"]
    assert release.body["payees"]["creator"] == creator


def test_a_model_creator_must_be_a_did() -> None:
    with pytest.raises(ValueError, match="model_creator"):
        job(model_creator="alice")
