"""Pure verification parts: comparison, policy decisions, reputation stores, attestations."""

from __future__ import annotations

import io

import numpy as np
import pytest

from computemesh.identity import Identity
from computemesh.models.errors import VerificationError
from computemesh.models.job import Tolerance, VerificationSpec
from computemesh.store import ReputationRepository, open_database
from computemesh.verification import (
    Answer,
    MemoryReputationStore,
    ReputationBook,
    ReputationStore,
    Standing,
    Verdict,
    answers_agree,
    attest_reputation,
    check_reputation_attestation,
    decide,
    seeded_draw,
)

NEW = Standing(verified=0.0, score=0.5)
VETERAN = Standing(verified=100.0, score=0.99)


def answer(output: str, provider: str = "p", *, fuel: int | None = None) -> Answer:
    return Answer(provider, "completed", 0, (("out.txt", output),), fuel=fuel)


def npy(values: list[float]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array(values, dtype=np.float32))
    return buffer.getvalue()


def tensor_answer(values: list[float]) -> Answer:
    data = npy(values)
    return Answer("p", "completed", 0, (("y.npy", str(hash(data))),), tensors={"y.npy": data})


def test_exact_comparison_covers_outputs_exit_code_and_wasm_fuel() -> None:
    exact = Tolerance()
    assert answers_agree(answer("a"), answer("a"), executor="process", tolerance=exact)
    assert not answers_agree(answer("a"), answer("b"), executor="process", tolerance=exact)
    failed = Answer("p", "failed", 1, (("out.txt", "a"),))
    assert not answers_agree(answer("a"), failed, executor="process", tolerance=exact)
    same, other = answer("a", fuel=10), answer("a", fuel=11)
    assert not answers_agree(same, other, executor="wasm", tolerance=exact)
    assert answers_agree(same, other, executor="process", tolerance=exact)


def test_onnx_tensors_agree_within_the_declared_tolerance_only() -> None:
    base = tensor_answer([1.0, 2.0])
    close = tensor_answer([1.0 + 1e-6, 2.0])
    far = tensor_answer([1.1, 2.0])
    loose = Tolerance(abs=1e-4)
    assert answers_agree(base, close, executor="onnx", tolerance=loose)
    assert not answers_agree(base, far, executor="onnx", tolerance=loose)
    assert not answers_agree(base, close, executor="onnx", tolerance=Tolerance())
    assert not answers_agree(base, close, executor="process", tolerance=loose)
    garbage = Answer("p", "completed", 0, (("y.npy", "x"),), tensors={"y.npy": b"not npy"})
    assert not answers_agree(base, garbage, executor="onnx", tolerance=loose)


def run_decide(
    policy: str, answers: list[Answer], standing: Standing = NEW, seed: str = "s", **rules: int
) -> str:
    verdict = decide(
        VerificationSpec(policy=policy, **rules),
        answers,
        initial=1,
        executor="process",
        standing=lambda _: standing,
        draw=seeded_draw(seed, "job"),
    )
    return verdict.decision


def test_adaptive_always_checks_a_new_provider_and_rarely_a_veteran() -> None:
    assert run_decide("adaptive", [answer("a")], NEW) == "replicate"
    checked = sum(
        run_decide("adaptive", [answer("a")], VETERAN, seed=str(i)) == "replicate"
        for i in range(1000)
    )
    assert 5 <= checked <= 50  # the 2 % floor


def test_decisions_are_fixed_by_the_seed() -> None:
    middling = Standing(verified=4.0, score=0.8)
    first = [run_decide("adaptive+audit", [answer("a")], middling, seed=str(i)) for i in range(50)]
    again = [run_decide("adaptive+audit", [answer("a")], middling, seed=str(i)) for i in range(50)]
    assert first == again
    assert {"accept", "replicate"} == set(first)


def test_disagreement_adds_replicas_until_a_quorum_then_names_the_losers() -> None:
    rules = VerificationSpec(policy="redundant", k=2, n=4)

    def decide_now(answers: list[Answer]) -> Verdict:
        return decide(
            rules,
            answers,
            initial=2,
            executor="process",
            standing=lambda _: NEW,
            draw=seeded_draw("s", "j"),
        )

    split = decide_now([answer("a", "x"), answer("b", "y")])
    assert split.decision == "replicate" and split.extra == 1
    settled = decide_now([answer("a", "x"), answer("b", "y"), answer("a", "z")])
    assert settled.decision == "accept"
    assert settled.winners == (0, 2) and settled.losers == (1,)


def test_a_node_that_never_answered_is_not_a_liar() -> None:
    lost = Answer("y", "failed", None, ())
    verdict = decide(
        VerificationSpec(policy="redundant", k=2),
        [answer("a", "x"), lost],
        initial=2,
        executor="process",
        standing=lambda _: NEW,
        draw=seeded_draw("s", "j"),
    )
    assert verdict.decision == "replicate" and verdict.missing == (1,) and verdict.losers == ()


def test_policy_spec_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        VerificationSpec(policy="adaptive+magic")
    with pytest.raises(ValueError, match="does not combine"):
        VerificationSpec(policy="none+audit")
    with pytest.raises(ValueError, match="k \\(3\\) is above n \\(2\\)"):
        VerificationSpec(policy="redundant", k=3, n=2)


@pytest.fixture(params=["memory", "sql"])
def store(request: pytest.FixtureRequest) -> ReputationStore:
    if request.param == "memory":
        return MemoryReputationStore()
    return ReputationRepository(open_database("sqlite://"))


def test_reputation_grows_decays_and_fraud_sticks(store: ReputationStore) -> None:
    now = [1_000.0]
    book = ReputationBook(store, half_life_s=100.0, clock=lambda: now[0])
    assert book.reputation_of("did:key:zA") == 0.5
    for _ in range(8):
        book.note_verified("did:key:zA", "wasm")
    assert book.reputation_of("did:key:zA") == pytest.approx(0.9)
    assert book.record("did:key:zA", "process").verified == 0.0
    now[0] += 100.0
    assert book.record("did:key:zA", "wasm").verified == pytest.approx(4.0)
    book.note_timeout("did:key:zB", "wasm")
    assert book.reputation_of("did:key:zB") < 0.5
    book.note_fraud("did:key:zC", "wasm")
    now[0] += 10_000.0
    assert book.reputation_of("did:key:zC") == 0.0
    assert book.excluded() == {"did:key:zC"}


def test_attestations_verify_and_tampering_fails() -> None:
    issuer = Identity.generate()
    book = ReputationBook(MemoryReputationStore())
    book.note_verified("did:key:zA", "wasm")
    document = attest_reputation(issuer, book, "did:key:zA")
    checked = check_reputation_attestation(document, issuer=issuer.did)
    assert checked.subject == "did:key:zA" and checked.score == pytest.approx(2 / 3, abs=1e-6)
    forged = {**document, "body": {**document["body"], "score": 1.0}}
    with pytest.raises(VerificationError, match="signature"):
        check_reputation_attestation(forged)
    with pytest.raises(VerificationError, match="expected"):
        check_reputation_attestation(document, issuer=Identity.generate().did)
