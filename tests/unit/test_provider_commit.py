"""A provider refuses every contract proposal that does not check, and runs nothing for it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from computemesh.actor import Actor, behaviours
from computemesh.identity import Identity, sign_document
from computemesh.models.errors import RemoteError
from computemesh.models.job import JobSpec
from computemesh.models.market import ContractTerms, Hardware, Rates
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.protocol import propose_contract, spec_digest, verify_contract
from computemesh.store import AllocationRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from tests.fakes import FakeExecutor

HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)
PRICE = 0.1
RATES = Rates(
    price_per_cpu_hour=PRICE,
    price_per_billion_fuel=0.001,
    price_per_gb_out=0.02,
    price_per_gb_hour=0.005,
)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[ProviderNode, Actor, FakeExecutor]]:
    hub = MemoryHub()
    executor = FakeExecutor()
    node = ProviderNode(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
        settings=NodeSettings(home=tmp_path, **RATES.model_dump()),
        hardware=HARDWARE,
        allocations=AllocationRepository(open_database("sqlite://")),
        executors={"process": executor},
    )
    consumer = Actor(identity=Identity.generate(), transport=MemoryTransport(hub))
    await node.start()
    await consumer.start()
    yield node, consumer, executor
    await consumer.stop()
    await node.stop()


def spec(**overrides: Any) -> JobSpec:
    data = {"name": "t", "command": ["true"], **overrides}
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


def terms_for(consumer: str, provider: str, job: JobSpec, **overrides: Any) -> ContractTerms:
    data = {
        "contract_id": "c" * 32,
        "job_id": "f" * 32,
        "consumer": consumer,
        "provider": provider,
        "spec_sha256": spec_digest(job),
        **RATES.model_dump(),
        "max_charge": 1.0,
        "created_at_ms": int(time.time() * 1000),
        **overrides,
    }
    return ContractTerms.model_validate(data)


async def commit(consumer: Actor, node: ProviderNode, proposal: Any, job: Any) -> dict[str, Any]:
    payload = {"proposal": proposal, "spec": job}
    return await consumer.request(node.did, behaviours.COMMIT, payload, timeout=2)


async def test_valid_proposal_is_countersigned_stored_and_run(setup: Any) -> None:
    node, consumer, executor = setup
    job = spec()
    terms = terms_for(consumer.did, node.did, job)
    reply = await commit(
        consumer, node, propose_contract(consumer.identity, terms), job.model_dump(mode="json")
    )
    assert verify_contract(reply["contract"]) == terms
    await node.wait_idle()
    assert node.allocations.get(terms.contract_id) is not None
    assert len(executor.ran) == 1
    again = await commit(
        consumer, node, propose_contract(consumer.identity, terms), job.model_dump(mode="json")
    )
    assert again["contract"] == reply["contract"]  # idempotent: same contract, no second run
    assert len(executor.ran) == 1


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("other_spec", "verification_failed"),
        ("other_provider", "verification_failed"),
        ("signed_by_someone_else", "wrong_signer"),
        ("price_too_low", "price_too_low"),
        ("fuel_price_too_low", "price_too_low"),
        ("output_price_too_low", "price_too_low"),
        ("memory_price_too_low", "price_too_low"),
        ("cap_too_low", "price_too_low"),
        ("too_big", "cannot_run"),
        ("not_a_document", "bad_document"),
    ],
)
async def test_bad_proposals_are_refused(setup: Any, case: str, code: str) -> None:
    node, consumer, executor = setup
    job = spec()
    sent = job.model_dump(mode="json")
    terms = terms_for(consumer.did, node.did, job)
    proposal: Any = propose_contract(consumer.identity, terms)
    if case == "other_spec":
        sent = spec(command=["rm", "-rf", "/work"]).model_dump(mode="json")
    elif case == "other_provider":
        other = terms_for(consumer.did, Identity.generate().did, job)
        proposal = propose_contract(consumer.identity, other)
    elif case == "signed_by_someone_else":
        proposal = sign_document(Identity.generate(), "contract", terms.model_dump(mode="json"))
    elif case == "price_too_low":
        cheap = terms_for(consumer.did, node.did, job, price_per_cpu_hour=PRICE / 2)
        proposal = propose_contract(consumer.identity, cheap)
    elif case.endswith("_price_too_low"):
        rate = {"fuel": "price_per_billion_fuel", "output": "price_per_gb_out"}.get(
            case.split("_")[0], "price_per_gb_hour"
        )
        cheap = terms_for(consumer.did, node.did, job, **{rate: 0.0})
        proposal = propose_contract(consumer.identity, cheap)
    elif case == "cap_too_low":
        capped = terms_for(consumer.did, node.did, job, max_charge=0.0001)
        proposal = propose_contract(consumer.identity, capped)
    elif case == "too_big":
        job = spec(resources={"cpu": 64})
        sent = job.model_dump(mode="json")
        proposal = propose_contract(consumer.identity, terms_for(consumer.did, node.did, job))
    elif case == "not_a_document":
        proposal = {"body": "nope"}
    with pytest.raises(RemoteError) as refused:
        await commit(consumer, node, proposal, sent)
    assert refused.value.code == code
    assert executor.ran == []
    assert node.allocations.get(terms.contract_id) is None
    assert node.ledger.running == 0


async def test_results_are_only_fetched_by_their_consumer(setup: Any) -> None:
    node, consumer, _ = setup
    job = spec()
    terms = terms_for(consumer.did, node.did, job)
    await commit(
        consumer, node, propose_contract(consumer.identity, terms), job.model_dump(mode="json")
    )
    await node.wait_idle()
    fetched = await consumer.request(
        node.did, behaviours.RESULT_FETCH, {"contract_id": terms.contract_id}, timeout=2
    )
    assert fetched["status"] == "finished"
    assert fetched["result"]["signer"] == node.did
    stranger = Actor(identity=Identity.generate(), transport=consumer.transport)
    with pytest.raises(RemoteError) as refused:
        await stranger.request(
            node.did, behaviours.RESULT_FETCH, {"contract_id": terms.contract_id}, timeout=2
        )
    assert refused.value.code == "unknown_allocation"
