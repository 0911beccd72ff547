"""A wasm job is paid by its fuel: real wasm replicas on the in-memory mesh, one SqliteLedger.

The nodes charge a CPU rate high enough that any difference in CPU time between the two
hosts would show in the bill; each replica is paid exactly its fuel and output bytes at the
contract's rates, so both providers earn the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from computemesh.actor import Actor
from computemesh.executor import WasmExecutor
from computemesh.identity import Identity
from computemesh.models.market import ContractTerms, Hardware, JobResult, Rates
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import load_job_spec
from computemesh.settlement import LedgerSettings, SqliteLedger, credits_to_units
from computemesh.store import AllocationRepository, JobRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport

WASM_EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "wasm"
FAST = OrchestratorSettings(bid_window_s=0.3, placement_timeout_s=1.0, fetch_interval_s=0.5)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)
PRIMES_FUEL = 45_041_629
RATES = Rates(
    price_per_cpu_hour=3600.0,  # a credit per CPU-second: CPU time would dominate the bill
    price_per_billion_fuel=10.0,
    price_per_gb_out=1000.0,  # a unit per byte
)
DEPOSIT = credits_to_units(1000)


@dataclass
class WasmMesh:
    ledger: SqliteLedger
    consumer: Identity
    nodes: list[ProviderNode]
    orchestrator: Orchestrator


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[WasmMesh]:
    hub = MemoryHub()
    consumer, treasury = Identity.generate(), Identity.generate()
    ledger_path = tmp_path / "ledger.db"
    ledger = SqliteLedger.open(ledger_path, consumer, LedgerSettings(treasury=treasury.did))
    ledger.deposit(consumer.did, DEPOSIT, deposit_id="test-funds")
    nodes = []
    for index in range(2):
        identity = Identity.generate()
        nodes.append(
            ProviderNode(
                actor=Actor(identity=identity, transport=MemoryTransport(hub)),
                settings=NodeSettings(home=tmp_path / f"n{index}", **RATES.model_dump()),
                hardware=HARDWARE,
                allocations=AllocationRepository(open_database("sqlite://")),
                executors={"wasm": WasmExecutor()},
                settlement=SqliteLedger.open(ledger_path, identity),
            )
        )
    for node in nodes:
        await node.start()
    orchestrator = Orchestrator(
        actor=Actor(identity=consumer, transport=MemoryTransport(hub)),
        jobs=JobRepository(open_database("sqlite://")),
        settings=FAST,
        ledger=ledger,
    )
    await orchestrator.start()
    await orchestrator.discover(window_s=0.2)
    yield WasmMesh(ledger, consumer, nodes, orchestrator)
    await orchestrator.stop()
    for node in nodes:
        await node.stop()


def units_for(fuel: int, bytes_out: int) -> int:
    credits = Decimal("10.0") * fuel / 10**9 + Decimal("1000.0") * bytes_out / 10**9
    return int((credits * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


async def test_wasm_replicas_are_paid_by_fuel_not_cpu_time(mesh: WasmMesh) -> None:
    spec = load_job_spec(WASM_EXAMPLES / "primes.yaml").model_copy(update={"replicas": 2})
    record = await mesh.orchestrator.run(spec, timeout=20)
    assert (record.status, record.verified) == ("completed", True)
    usages = {
        document["body"]["provider"]: JobResult.model_validate(document["body"]).usage
        for document in record.results
    }
    assert {usage.fuel for usage in usages.values()} == {PRIMES_FUEL}
    assert len({usage.bytes_out for usage in usages.values()}) == 1
    contracts = [ContractTerms.model_validate(c["terms"]) for c in record.contracts]
    assert {terms.rates for terms in contracts} == {RATES}
    paid = {}
    for terms in contracts:
        escrow = mesh.ledger.escrow(terms.contract_id)
        assert escrow.closed
        usage = usages[terms.provider]
        assert escrow.released == units_for(PRIMES_FUEL, usage.bytes_out)
        assert escrow.released < credits_to_units(terms.max_charge)
        paid[terms.provider] = escrow.released
    assert len(paid) == 2 and len(set(paid.values())) == 1
    balances = {mesh.ledger.balance(node.did).available for node in mesh.nodes}
    assert len(balances) == 1 and balances.pop() > 0
    assert mesh.ledger.verify().ok
