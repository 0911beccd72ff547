"""`cmesh verify show` and `cmesh reputation show|export|check` over a consumer home whose
store an in-memory mesh with a lying provider filled."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from computemesh.actor import Actor
from computemesh.app.consumer import open_jobs
from computemesh.app.home import MeshHome
from computemesh.cli.main import app
from computemesh.identity import Identity, load_or_create_identity, sign_document
from computemesh.models.job import JobSpec
from computemesh.models.market import Hardware
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.orchestrator import Orchestrator, OrchestratorSettings
from computemesh.orchestrator.specfile import resolve_inputs
from computemesh.orchestrator.verify_flow import VerificationSettings, consumer_verification
from computemesh.store import AllocationRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from computemesh.verification import REPUTATION_ATTESTATION_KIND
from tests.fakes import FakeExecutor

runner = CliRunner()
FAST = OrchestratorSettings(bid_window_s=0.3, placement_timeout_s=1.0, fetch_interval_s=0.5)
HARDWARE = Hardware(cpu_count=2, architecture="x86_64", memory_mb=4096, disk_mb=10_000)


@dataclass(frozen=True)
class Judged:
    home: Path
    job_id: str
    liar: str
    honest: list[str]
    consumer: str


def cmesh(home: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--home", str(home), *args])
    return result.exit_code, result.output


def flat(text: str) -> str:
    """``text`` with Rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture
async def judged(tmp_path: Path) -> Judged:
    """A home whose store holds one `redundant` job that outvoted a lying provider."""
    home = MeshHome.resolve(tmp_path / "home")
    hub = MemoryHub()
    nodes = [
        ProviderNode(
            actor=Actor(identity=Identity.generate(), transport=MemoryTransport(hub)),
            settings=NodeSettings(
                home=tmp_path / f"n{i}", price_per_cpu_hour=0.1 * (i + 1), fault=fault
            ),
            hardware=HARDWARE,
            allocations=AllocationRepository(open_database("sqlite://")),
            executors={"process": FakeExecutor()},
        )
        for i, fault in enumerate(["wrong", None, None])
    ]
    for node in nodes:
        await node.start()
    jobs = open_jobs(home)
    identity = load_or_create_identity(home.root)
    orchestrator = Orchestrator(
        actor=Actor(identity=identity, transport=MemoryTransport(hub)),
        jobs=jobs,
        settings=FAST,
        verification=consumer_verification(
            jobs, identity, settings=VerificationSettings(seed="cli-test")
        ),
    )
    await orchestrator.start()
    try:
        await orchestrator.discover(window_s=0.2)
        spec = JobSpec.model_validate(
            {
                "name": "echo",
                "command": ["cat", "in.txt"],
                "inputs": [{"path": "in.txt", "content": "hello mesh"}],
                "outputs": ["out.txt"],
                "verification": {"policy": "redundant", "k": 2},
            }
        )
        record = await orchestrator.run(resolve_inputs(spec, Path(".")), timeout=10)
    finally:
        await orchestrator.stop()
        for node in nodes:
            await node.stop()
    assert record.verified is True
    return Judged(
        home=home.root,
        job_id=record.job_id,
        liar=nodes[0].did,
        honest=[node.did for node in nodes[1:]],
        consumer=identity.did,
    )


def test_verify_show_prints_the_replicas_and_the_fraud_record(judged: Judged) -> None:
    code, out = cmesh(judged.home, "verify", "show", judged.job_id[:8])
    assert code == 0, out
    out = flat(out)
    assert f"job {judged.job_id}" in out and "verified" in out and "policy redundant" in out
    assert "3 replica(s)" in out
    assert out.count("WRONG (fraud record)") == 1
    assert f"fraud: {judged.liar}" in out and f"signed by {judged.consumer}" in out


def test_verify_show_json_names_the_losing_replica(judged: Judged) -> None:
    code, out = cmesh(judged.home, "verify", "show", judged.job_id, "--json")
    assert code == 0, out
    view = json.loads(out)
    assert (view["job_id"], view["status"], view["verified"]) == (
        judged.job_id,
        "completed",
        True,
    )
    assert view["policy"]["policy"] == "redundant"
    lost = [replica["provider"] for replica in view["replicas"] if replica["lost"]]
    assert lost == [judged.liar]
    (fraud,) = view["fraud_records"]
    assert fraud["provider"] == judged.liar
    assert fraud["verdict"]["signer"] == judged.consumer


def test_verify_show_of_an_unknown_job_is_an_error(judged: Judged) -> None:
    code, out = cmesh(judged.home, "verify", "show", "ffffffff", "--json")
    assert code == 1
    assert "no job matches" in json.loads(out)["error"]["message"]


def test_reputation_show_lists_every_provider_and_one_in_detail(judged: Judged) -> None:
    code, out = cmesh(judged.home, "reputation", "show", "--json")
    assert code == 0, out
    views = {view["did"]: view for view in json.loads(out)["providers"]}
    assert set(views) == {judged.liar, *judged.honest}
    assert views[judged.liar]["score"] == 0.0 and views[judged.liar]["excluded"] is True
    assert views[judged.liar]["executors"]["process"]["fraud"] is True
    for did in judged.honest:
        assert views[did]["score"] > 0.5 and not views[did]["excluded"]
        assert views[did]["uptime"]["up_s"] > 0  # the session watched it heartbeat

    code, out = cmesh(judged.home, "reputation", "show", judged.honest[0], "--json")
    assert code == 0 and json.loads(out)["executors"]["process"]["verified"] > 0.9

    code, out = cmesh(judged.home, "reputation", "show")
    assert code == 0 and "3 provider(s)" in out and "EXCLUDED (fraud)" in out

    code, out = cmesh(judged.home, "reputation", "show", "did:key:nonsense", "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "bad_did"


def test_exported_attestation_checks_and_tampered_or_forged_ones_are_refused(
    judged: Judged, tmp_path: Path
) -> None:
    file = tmp_path / "liar.json"
    code, out = cmesh(judged.home, "reputation", "export", judged.liar, "-o", str(file))
    assert code == 0, out
    document = json.loads(file.read_text())
    assert document["signer"] == judged.consumer

    code, out = cmesh(tmp_path / "elsewhere", "reputation", "check", str(file), "--json")
    assert code == 0, out
    checked = json.loads(out)["attestation"]
    assert (checked["subject"], checked["issuer"]) == (judged.liar, judged.consumer)
    assert checked["fraud"] is True and checked["score"] == 0.0
    code, out = cmesh(tmp_path / "elsewhere", "reputation", "check", str(file))
    assert code == 0 and "valid attestation" in out

    refused = {
        "tampered": {**document, "body": {**document["body"], "fraud": False, "score": 0.9}},
        "forged": sign_document(Identity.generate(), REPUTATION_ATTESTATION_KIND, document["body"])
        | {"signer": judged.consumer},
        "expired": sign_document(
            load_or_create_identity(judged.home),
            REPUTATION_ATTESTATION_KIND,
            {**document["body"], "issued_at_ms": 1_000, "expires_at_ms": 2_000},
        ),
    }
    reasons = {}
    for name, bad in refused.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(bad))
        code, out = cmesh(tmp_path / "elsewhere", "reputation", "check", str(path), "--json")
        assert code == 1, (name, out)
        reasons[name] = json.loads(out)["error"]
    assert "signature does not verify" in reasons["tampered"]["message"]
    assert "signature does not verify" in reasons["forged"]["message"]
    assert reasons["expired"]["code"] == "expired_attestation"
    assert "expired" in reasons["expired"]["message"]

    code, out = cmesh(tmp_path / "elsewhere", "reputation", "check", str(file))
    assert code == 0
    other = Identity.generate().did
    code, out = cmesh(judged.home, "reputation", "check", str(file), "--issuer", other)
    assert code == 1 and "expected" in flat(out)


def test_check_refuses_files_that_are_not_attestations(tmp_path: Path) -> None:
    cases: dict[str, Any] = {
        "missing.json": None,
        "garbage.json": b"{not json",
        "huge.json": b" " * (64 * 1024 + 1),
        "other-kind.json": json.dumps(sign_document(Identity.generate(), "job-result", {})),
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        code, out = cmesh(tmp_path, "reputation", "check", str(path), "--json")
        assert code == 1, name
        assert json.loads(out)["error"]["code"] == "bad_attestation", name


def test_export_refuses_a_provider_it_holds_no_record_of(tmp_path: Path) -> None:
    stranger = Identity.generate().did
    code, out = cmesh(tmp_path, "reputation", "export", stranger, "-o", str(tmp_path / "x.json"))
    assert code == 1 and "no record" in flat(out)
    assert not (tmp_path / "x.json").exists()
