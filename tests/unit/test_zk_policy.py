"""How ``decide`` judges answers under the zk policy, given what each proof showed."""

from __future__ import annotations

import pytest

from computemesh.models.job import VerificationSpec
from computemesh.verification import Answer, Standing, Verdict, decide
from computemesh.verification.policy import ProofCheck

PROVEN = ProofCheck("proven")
REFUTED = ProofCheck("refuted", "output 'y' is not the output the proof proves")
UNPROVEN = ProofCheck("unproven", "the result carries no proof")


def answer(provider: str, output: str = "right") -> Answer:
    return Answer(provider, "completed", 0, (("y.npy", output),))


def judge(policy: str, answers: list[Answer], proofs: list[ProofCheck], n: int = 5) -> Verdict:
    return decide(
        VerificationSpec(policy=policy, n=n, k=2 if "redundant" in policy else 1),
        answers,
        initial=1,
        executor="onnx",
        standing=lambda did: Standing(verified=100.0, score=0.9),
        draw=lambda purpose: 0.99,
        proofs=proofs,
    )


def test_a_proven_answer_is_accepted_as_checked() -> None:
    verdict = judge("zk", [answer("a")], [PROVEN])
    assert (verdict.decision, verdict.winners, verdict.checked) == ("accept", (0,), True)


def test_a_refuted_proof_loses_and_another_replica_is_asked_for() -> None:
    verdict = judge("zk", [answer("a", "wrong")], [REFUTED])
    assert (verdict.decision, verdict.extra, verdict.losers) == ("replicate", 1, (0,))
    assert "zk proof refuted" in verdict.reason and "answer 1" in verdict.reason


def test_the_proven_replica_wins_and_the_refuted_one_is_convicted() -> None:
    verdict = judge("zk", [answer("a", "wrong"), answer("b")], [REFUTED, PROVEN])
    assert (verdict.decision, verdict.winners, verdict.losers) == ("accept", (1,), (0,))
    assert verdict.reason.startswith("zk proof refuted")


def test_an_unproven_answer_is_left_out_not_convicted() -> None:
    verdict = judge("zk", [answer("a"), answer("b")], [UNPROVEN, PROVEN])
    assert (verdict.winners, verdict.losers, verdict.missing) == ((1,), (), (0,))


def test_no_proven_answer_within_n_fails_with_the_losers() -> None:
    verdict = judge("zk", [answer("a", "x"), answer("b", "y")], [REFUTED, UNPROVEN], n=2)
    assert (verdict.decision, verdict.losers, verdict.missing) == ("fail", (0,), (1,))
    assert verdict.reason.startswith("no proven answer")


def test_zk_with_redundant_needs_k_proven_agreeing_answers() -> None:
    first = judge("zk+redundant", [answer("a"), answer("b")], [PROVEN, UNPROVEN])
    assert (first.decision, first.extra) == ("replicate", 1)
    both = judge("zk+redundant", [answer("a"), answer("b")], [PROVEN, PROVEN])
    assert (both.decision, both.winners) == ("accept", (0, 1))


def test_zk_without_proof_checks_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="one proof check per answer"):
        judge("zk", [answer("a")], [])
