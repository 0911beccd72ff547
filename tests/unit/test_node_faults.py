"""Fault injection: the command-line forms, bad ones refused, and `wrong:P` lying at rate P."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from computemesh.models.market import JobResult, OutputFile, ResourceUsage
from computemesh.node.faults import Fault, FaultInjector, parse_fault
from computemesh.node.settings import NodeSettings

HONEST = OutputFile(path="out.txt", sha256="a" * 64, size=10)


def result(index: int = 0) -> JobResult:
    return JobResult(
        contract_id=f"{index:032x}",
        job_id="b" * 32,
        provider="did:key:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw",
        status="completed",
        exit_code=0,
        stdout="",
        stderr="",
        outputs=[HONEST],
        usage=ResourceUsage(wall_s=1.0, cpu_s=1.0, max_rss_kb=1),
        finished_at_ms=1,
    )


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("wrong", Fault("wrong", probability=1.0)),
        ("wrong:0.25", Fault("wrong", probability=0.25)),
        ("wrong:1", Fault("wrong", probability=1.0)),
        ("collude:s3cret", Fault("collude", secret="s3cret")),
        ("late:0", Fault("late", delay_s=0.0)),
        ("late:2.5", Fault("late", delay_s=2.5)),
    ],
)
def test_fault_forms_parse(text: str, fault: Fault) -> None:
    assert parse_fault(text) == fault


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "use wrong, wrong:P"),
        ("right", "use wrong, wrong:P"),
        ("wrong:", "use wrong, wrong:P"),
        ("wrong:-0.5", "use wrong, wrong:P"),
        ("wrong:abc", "use wrong, wrong:P"),
        ("wrong:0", "probability must be in \\(0, 1\\]"),
        ("wrong:1.5", "probability must be in \\(0, 1\\]"),
        ("collude", "use wrong, wrong:P"),
        ("collude:", "use wrong, wrong:P"),
        ("collude:two words", "use wrong, wrong:P"),
        ("collude:" + "x" * 129, "use wrong, wrong:P"),
        ("late", "use wrong, wrong:P"),
        ("late:soon", "use wrong, wrong:P"),
        ("late:3601", "delay must be 0 to 3600 seconds"),
        (" wrong", "use wrong, wrong:P"),
        ("wrong:0.5\n", "use wrong, wrong:P"),
    ],
)
def test_bad_fault_forms_are_refused_with_what_is_accepted(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_fault(text)


def test_node_settings_refuse_a_bad_fault(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="probability must be in"):
        NodeSettings(home=tmp_path, fault="wrong:2")
    assert NodeSettings(home=tmp_path, fault="wrong:0.5").fault == "wrong:0.5"
    assert NodeSettings(home=tmp_path).fault is None


async def test_wrong_p_lies_about_a_fraction_p_of_results_with_signable_documents() -> None:
    injector = FaultInjector(parse_fault("wrong:0.3"), rng=random.Random(7))
    tampered = [await injector.tamper(result(index)) for index in range(2_000)]
    wrong = [item for item in tampered if item.outputs[0] != HONEST]
    assert 0.25 < len(wrong) / len(tampered) < 0.35
    for item in wrong:
        (output,) = item.outputs
        assert output.path == HONEST.path and output.content_b64 is not None
        assert output.size == len(output.content_b64) * 3 // 4 - output.content_b64.count("=")
        assert item.status == "completed" and item.exit_code == 0
    assert len({item.outputs[0].sha256 for item in wrong}) == len(wrong)  # no two alike


async def test_wrong_always_lies_and_without_outputs_changes_the_exit_code() -> None:
    injector = FaultInjector(parse_fault("wrong"))
    assert all([(await injector.tamper(result(i))).outputs[0] != HONEST for i in range(50)])
    bare = result().model_copy(update={"outputs": []})
    assert (await injector.tamper(bare)).exit_code == 1
