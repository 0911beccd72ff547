"""A liar on a real local mesh under the network's default policy: outvoted, unpaid, slashed.

nats-server, two honest sandboxed nodes and one node lying on purpose (``--fault wrong``,
the cheapest, so it is offered the job first), one ledger file. The consumer session sets
``redundant`` as the network default, so the job names no policy; the consumer is the local
ledger's arbiter, so the fraud it proves slashes the liar's stake.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from computemesh.app.consumer import consumer_session
from computemesh.app.home import ENV_LEDGER, MeshHome
from computemesh.app.localmesh import NodePlan, mesh_down, mesh_up, node_command, wait_nodes_ready
from computemesh.identity import load_or_create_identity
from computemesh.models.job import JobSpec, VerificationSpec
from computemesh.orchestrator import OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.orchestrator.verify_flow import VerificationSettings
from computemesh.settlement import SqliteLedger, credits_to_units
from computemesh.transport import spawn_detached, stop_process

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

SETTINGS = OrchestratorSettings(bid_window_s=1.0, placement_timeout_s=30)
STAKE = credits_to_units(5)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[dict[str, Any]]:
    home = MeshHome(tmp_path / "mesh")
    state = mesh_up(home, nodes=2)
    liar = _spawn_liar(home, state["nats_url"])
    try:
        wait_nodes_ready([liar])
        yield {"state": state, "liar": liar, "home": home}
    finally:
        stop_process(liar["pid"])
        mesh_down(home)


def _spawn_liar(home: MeshHome, nats_url: str) -> dict[str, Any]:
    node_home = home.node_home("liar")
    node_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    plan = NodePlan(name="liar", region="eu-west", price_per_cpu_hour=0.01)
    command = [*node_command(node_home, nats_url, plan, sandbox=True), "--fault", "wrong"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", ENV_LEDGER: str(home.ledger_db)}
    log_file = home.logs_dir / "liar.log"
    pid = spawn_detached(command, log_file, env=env).pid
    did = load_or_create_identity(node_home).did
    return {"name": "liar", "pid": pid, "did": did, "home": str(node_home), "log": str(log_file)}


def spec() -> JobSpec:
    data = {
        "name": "answer",
        "command": ["sh", "-c", "echo 42 > out.txt"],
        "outputs": ["out.txt"],
        "timeout_s": 20,
    }
    return resolve_inputs(JobSpec.model_validate(data), Path("."))


async def test_the_default_policy_outvotes_a_liar_who_is_refunded_and_slashed(
    mesh: dict[str, Any],
) -> None:
    home, liar = mesh["home"], mesh["liar"]["did"]
    ledger = SqliteLedger.open(home.ledger_db, load_or_create_identity(home.root))
    ledger.deposit(liar, STAKE, deposit_id="liar-funds")
    ledger.stake(liar, STAKE, stake_id="liar-stake")
    default = VerificationSettings(default=VerificationSpec(policy="redundant", k=2))
    async with consumer_session(
        home, mesh["state"]["nats_url"], settings=SETTINGS, verification=default
    ) as orchestrator:
        await orchestrator.discover(window_s=1.0)
        record = await orchestrator.run(spec(), timeout=60)
    assert (record.status, record.verified) == ("completed", True), record.reason
    terms = {c["terms"]["provider"]: c["terms"] for c in record.contracts}
    assert liar in terms and len(terms) == 3
    lost = ledger.escrow(terms[liar]["contract_id"])
    assert lost.closed and lost.released == 0 and lost.refunded == lost.locked
    assert ledger.balance(liar).available == 0
    assert ledger.balance(liar).staked == STAKE - credits_to_units(1)
    for did, contract in terms.items():
        if did != liar:
            assert ledger.escrow(contract["contract_id"]).released > 0
    assert ledger.verify().ok
