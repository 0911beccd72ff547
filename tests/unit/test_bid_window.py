"""The bid window closes early once enough answers are in.

The mesh tests use a ten-minute window: if it did not close early they would run into the
test timeout, so reaching their assertions at all shows it did; the assertions then check
which answers the placement was decided on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from computemesh.actor import Actor, Inbound, behaviours
from computemesh.identity import Identity
from computemesh.models.errors import NoProviderError
from computemesh.models.job import JobSpec
from computemesh.models.market import (
    Advertisement,
    Bid,
    BidRefusal,
    Capacity,
    Hardware,
)
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.bids import BidCollection
from computemesh.store import AllocationRepository, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from tests.fakes import FakeExecutor

pytestmark = pytest.mark.timeout(60)

LONG_WINDOW = OrchestratorSettings(bid_window_s=600.0, placement_timeout_s=1.0)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)
A, B, C = "did:key:a", "did:key:b", "did:key:c"
REQUEST, JOB = "0" * 32, "1" * 32


def bid() -> Bid:
    advert = Advertisement(
        hardware=HARDWARE,
        region="eu-west",
        executors=["process"],
        price_per_cpu_hour=0.1,
        sandboxed=True,
        free=Capacity(cpu=2, memory_mb=4096, disk_mb=10_000, gpu_count=0),
        version="0.1.0",
    )
    return Bid(
        request_id=REQUEST, job_id=JOB, price_per_cpu_hour=0.1, max_charge=1.0, advertisement=advert
    )


def refusal() -> BidRefusal:
    return BidRefusal(request_id=REQUEST, job_id=JOB, reasons=["cpu: needs 4, node has 2"])


def test_the_window_stays_open_until_every_expected_node_answered() -> None:
    collection = BidCollection(REQUEST, expected=frozenset({A, B, C}))
    collection.add_bid(A, bid())
    collection.add_refusal(B, refusal())
    collection.add_bid(A, bid())  # a second answer from the same node does not count
    assert not collection.done.is_set()
    assert collection.silent() == {C}
    collection.add_refusal(C, refusal())
    assert collection.done.is_set()
    assert (len(collection.bids), len(collection.refusals)) == (1, 2)
    assert collection.silent() == set()


def test_the_window_closes_once_every_preferred_node_bid() -> None:
    collection = BidCollection(REQUEST, expected=frozenset({A, B, C}), preferred=frozenset({A, B}))
    collection.add_bid(A, bid())
    collection.add_refusal(B, refusal())  # a refusal is an answer, not one of the bids wanted
    assert not collection.done.is_set()
    collection.add_bid(C, bid())
    assert collection.done.is_set()  # everyone answered

    preferred = BidCollection(REQUEST, expected=frozenset({A, B, C}), preferred=frozenset({A, B}))
    preferred.add_bid(B, bid())
    preferred.add_bid(A, bid())
    assert preferred.done.is_set()
    assert preferred.silent() == {C}


def test_an_answer_from_a_node_not_asked_does_not_close_the_window() -> None:
    collection = BidCollection(REQUEST, expected=frozenset({A}), preferred=frozenset({A}))
    collection.add_bid(B, bid())
    collection.add_refusal(C, refusal())
    assert not collection.done.is_set()


async def test_wait_returns_once_the_window_closed_early() -> None:
    collection = BidCollection(REQUEST, expected=frozenset({A}))
    collection.add_refusal(A, refusal())
    await collection.wait(600.0)
    assert collection.done.is_set()


def make_node(hub: MemoryHub, home: Path) -> ProviderNode:
    return ProviderNode(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
        settings=NodeSettings(home=home, region="eu-west"),
        hardware=HARDWARE,
        allocations=AllocationRepository(open_database("sqlite://")),
        executors={"process": FakeExecutor()},
    )


def stay_silent(node: ProviderNode, asked: list[str]) -> None:
    """The node takes bid requests and never answers them."""

    async def swallow(inbound: Inbound) -> None:
        asked.append(node.did)

    node.actor.register(behaviours.BID_REQUEST, swallow)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[Orchestrator, list[ProviderNode]]]:
    hub = MemoryHub()
    nodes = [make_node(hub, tmp_path / f"node-{number}") for number in range(3)]
    for node in nodes:
        await node.start()
    orchestrator = Orchestrator(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
        jobs=JobRepository(open_database("sqlite://")),
        settings=LONG_WINDOW,
    )
    await orchestrator.start()
    await orchestrator.discover(window_s=0.3)
    assert len(orchestrator.known_nodes) == 3
    yield orchestrator, nodes
    await orchestrator.stop()
    for node in nodes:
        await node.stop()


def probe() -> JobSpec:
    return JobSpec.model_validate({"name": "probe", "command": ["true"]})


async def test_placement_goes_ahead_once_the_best_candidate_bid_while_others_are_silent(
    mesh: tuple[Orchestrator, list[ProviderNode]],
) -> None:
    orchestrator, nodes = mesh
    spec = probe()
    ranked = orchestrator.candidates(spec, frozenset(), 1)
    assert len(ranked) == 3  # one replica wanted, every node asked, the best one preferred
    asked: list[str] = []
    for node in nodes:
        if node.did != ranked[0]:
            stay_silent(node, asked)
    job_id = orchestrator.submit(spec)
    contracts = await orchestrator.place(job_id)
    assert [contract["terms"]["provider"] for contract in contracts] == [ranked[0]]
    assert sorted(asked) == sorted(ranked[1:])  # asked, and not waited for


async def test_refusals_from_every_candidate_end_the_window_with_their_reasons(
    mesh: tuple[Orchestrator, list[ProviderNode]],
) -> None:
    orchestrator, nodes = mesh
    for node in nodes:
        node.executors = {}  # each still bids on nothing: it refuses, having no sandbox
    job_id = orchestrator.submit(probe())
    with pytest.raises(NoProviderError) as caught:
        await orchestrator.place(job_id)
    assert "0 bid(s), 3 refusal(s)" in str(caught.value)
    assert not any("did not answer" in reason for reason in caught.value.reasons)
    assert orchestrator.jobs.get(job_id).status == "no_provider"
