"""Verification policies: from the answers in hand, accept one, ask for more, or give up.

``decide`` is a pure function of the job's rules, the answers so far, what is known of the
providers and a draw: the same inputs give the same verdict, so the orchestrator, the tests
and the simulation (``bench/verification.py``) all run this one function.

- ``redundant``: a quorum of ``k`` agreeing answers from distinct providers.
- ``adaptive``: with one answer, ask for one more with probability
  ``max(adaptive_floor, 0.5 ** (verified / adaptive_half_record))``: certain for a provider
  never checked with this executor, rarer as its verified record grows.
- ``audit``: re-execute on another provider with probability ``audit_rate`` (the job's, else
  ``audit_floor`` up to ``audit_ceiling`` as reputation falls, lowered by stake).
- ``zk``: only answers whose proof of the inference checked take part (``ProofCheck``); an
  answer whose proof is refuted loses (fraud), one without a usable proof is left out like
  an answer that never ran. A proven answer counts as checked.
- On disagreement: more replicas until one group holds a quorum (at least two, and more
  than any other group), at most ``n`` answers in all; the other answers lose.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from computemesh.models.job import VerificationSpec
from computemesh.settlement.amounts import UNITS_PER_CREDIT
from computemesh.verification.compare import Answer, group_answers

Draw = Callable[[str], float]
"""A uniform number in [0, 1) for a named decision about one job."""

Decision = Literal["accept", "replicate", "fail"]

ProofStanding = Literal["proven", "refuted", "unproven"]


@dataclass(frozen=True)
class ProofCheck:
    """What checking one answer's zk proof showed.

    ``proven``: the proof verifies and binds the answer's inputs and outputs; ``refuted``: a
    proof was sent and does not (fraud); ``unproven``: no proof that could be checked (none
    sent, made for another circuit or reference string): not evidence of fraud.
    """

    standing: ProofStanding
    reason: str = ""


@dataclass(frozen=True)
class PolicyTuning:
    """Network-wide knobs of the adaptive and audit policies."""

    adaptive_floor: float = 0.02
    adaptive_half_record: float = 4.0
    audit_floor: float = 0.01
    audit_ceiling: float = 0.5
    stake_reference: int = 100 * UNITS_PER_CREDIT
    """Stake (units) that halves the reputation-driven part of the audit rate (the part
    above ``audit_floor``): a provider with ``s`` staked keeps ``ref / (ref + s)`` of it.
    0: stake is ignored."""


@dataclass(frozen=True)
class Standing:
    """What the policy knows of a provider: verified results with this executor, score, stake."""

    verified: float
    score: float
    stake: int | None = None


@dataclass(frozen=True)
class Verdict:
    """What to do with a job's answers.

    ``winners`` agree and form the accepted answer; ``losers`` are complete answers a quorum
    proved wrong; ``missing`` never ran to an exit; ``extra`` replicas are wanted when the
    decision is ``replicate``. Indices refer to the answers given to ``decide``.
    """

    decision: Decision
    reason: str
    winners: tuple[int, ...] = ()
    losers: tuple[int, ...] = ()
    missing: tuple[int, ...] = ()
    extra: int = 0
    checked: bool = False
    """The winners were confirmed by at least two providers."""


def seeded_draw(seed: str, job_id: str) -> Draw:
    """Draws fixed by ``seed`` and the job id: the same job always gets the same decisions."""

    def draw(purpose: str) -> float:
        digest = hashlib.sha256(f"{seed}\x00{job_id}\x00{purpose}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return draw


def initial_replicas(rules: VerificationSpec, replicas: int) -> int:
    """How many providers to place the job on at first."""
    return max(replicas, quorum_size(rules))


def quorum_size(rules: VerificationSpec) -> int:
    return rules.k if "redundant" in rules.policies else 1


def adaptive_rate(standing: Standing, tuning: PolicyTuning) -> float:
    decay: float = 0.5 ** (standing.verified / tuning.adaptive_half_record)
    return max(tuning.adaptive_floor, decay)


def audit_rate(rules: VerificationSpec, standing: Standing, tuning: PolicyTuning) -> float:
    if rules.audit_rate is not None:
        return rules.audit_rate
    span = (tuning.audit_ceiling - tuning.audit_floor) * (1.0 - standing.score)
    if standing.stake and tuning.stake_reference:
        span *= tuning.stake_reference / (tuning.stake_reference + standing.stake)
    return tuning.audit_floor + max(0.0, span)


def decide(
    rules: VerificationSpec,
    answers: Sequence[Answer],
    *,
    initial: int,
    executor: str,
    standing: Callable[[str], Standing],
    draw: Draw,
    tuning: PolicyTuning | None = None,
    proofs: Sequence[ProofCheck] | None = None,
) -> Verdict:
    """The verdict on a job whose placed replicas have all answered (see the module doc).

    ``proofs`` (one per answer) is required when the rules include ``zk``.
    """
    tuning = tuning or PolicyTuning()
    if "zk" in rules.policies:
        if proofs is None or len(proofs) != len(answers):
            raise ValueError("the zk policy needs one proof check per answer")
        return _decide_proven(rules, answers, proofs, initial, executor, standing, draw, tuning)
    complete = [index for index, answer in enumerate(answers) if answer.complete]
    missing = tuple(index for index, answer in enumerate(answers) if not answer.complete)
    if not complete:
        return Verdict("accept", "no replica ran to an exit", missing=missing)
    grouped = group_answers(
        [answers[index] for index in complete], executor=executor, tolerance=rules.tolerance
    )
    groups = [tuple(complete[position] for position in group) for group in grouped]
    if len(groups) == 1:
        return _agreed(rules, answers, groups[0], missing, initial, standing, draw, tuning)
    return _disputed(rules, len(answers), groups, missing)


def _decide_proven(
    rules: VerificationSpec,
    answers: Sequence[Answer],
    proofs: Sequence[ProofCheck],
    initial: int,
    executor: str,
    standing: Callable[[str], Standing],
    draw: Draw,
    tuning: PolicyTuning,
) -> Verdict:
    """``decide`` over the proven answers alone, refuted ones losing, indices mapped back."""
    kept = [index for index, check in enumerate(proofs) if check.standing == "proven"]
    refuted = tuple(index for index, check in enumerate(proofs) if check.standing == "refuted")
    unproven = tuple(
        index for index in range(len(answers)) if index not in kept and index not in refuted
    )
    others = "+".join(sorted(rules.policies - {"zk"})) or "none"
    inner = decide(
        rules.model_copy(update={"policy": others}),
        [answers[index] for index in kept],
        initial=initial,
        executor=executor,
        standing=standing,
        draw=draw,
        tuning=tuning,
    )
    why = "; ".join(f"answer {index + 1}: {proofs[index].reason}" for index in refuted)
    verdict = replace(
        inner,
        reason=f"zk proof refuted ({why})" if refuted else inner.reason,
        winners=tuple(kept[index] for index in inner.winners),
        losers=tuple(sorted((*refuted, *(kept[index] for index in inner.losers)))),
        missing=tuple(sorted((*unproven, *(kept[index] for index in inner.missing)))),
        checked=inner.decision == "accept" and bool(inner.winners),
    )
    if verdict.decision == "replicate" or (verdict.decision == "accept" and not verdict.winners):
        room = rules.n - len(answers)
        if room <= 0:
            return replace(verdict, decision="fail", reason=f"no proven answer: {verdict.reason}")
        return replace(verdict, decision="replicate", extra=min(max(1, inner.extra), room))
    return verdict


def _agreed(
    rules: VerificationSpec,
    answers: Sequence[Answer],
    group: tuple[int, ...],
    missing: tuple[int, ...],
    initial: int,
    standing: Callable[[str], Standing],
    draw: Draw,
    tuning: PolicyTuning,
) -> Verdict:
    wanted = quorum_size(rules) - len(group)
    if wanted > 0:
        return _more(rules, len(answers), wanted, f"{len(group)} of {quorum_size(rules)}", missing)
    if len(answers) <= initial and len(answers) < rules.n:
        weakest = min((standing(answers[i].provider) for i in group), key=lambda s: s.verified)
        check = _spot_check(rules, weakest, draw, tuning)
        if check:
            return Verdict("replicate", check, winners=group, missing=missing, extra=1)
    return Verdict(
        "accept", "answers agree", winners=group, missing=missing, checked=len(group) > 1
    )


def _spot_check(
    rules: VerificationSpec, weakest: Standing, draw: Draw, tuning: PolicyTuning
) -> str:
    """Why this job gets one more replica, or "" when it does not."""
    policies = rules.policies
    if "adaptive" in policies and draw("adaptive") < adaptive_rate(weakest, tuning):
        return "adaptive replication"
    if "audit" in policies and draw("audit") < audit_rate(rules, weakest, tuning):
        return "audit"
    return ""


def _disputed(
    rules: VerificationSpec,
    answered: int,
    groups: list[tuple[int, ...]],
    missing: tuple[int, ...],
) -> Verdict:
    needed = max(quorum_size(rules), 2)
    best, runner_up = groups[0], groups[1]
    if len(best) >= needed and len(best) > len(runner_up):
        losers = tuple(sorted(index for group in groups[1:] for index in group))
        return Verdict(
            "accept",
            f"{len(best)} agreeing answers outvote {len(losers)}",
            winners=best,
            losers=losers,
            missing=missing,
            checked=True,
        )
    return _more(rules, answered, max(1, needed - len(best)), "replicas disagree", missing)


def _more(
    rules: VerificationSpec, answered: int, wanted: int, why: str, missing: tuple[int, ...]
) -> Verdict:
    room = rules.n - answered
    if room <= 0:
        return Verdict("fail", f"{why}: no quorum within {rules.n} replicas", missing=missing)
    return Verdict("replicate", why, missing=missing, extra=min(wanted, room))


class VerdictLearner(Protocol):
    """What a verdict teaches (``ReputationBook`` is one)."""

    def note_verified(self, did: str, executor: str) -> None: ...

    def note_timeout(self, did: str, executor: str) -> None: ...

    def note_fraud(self, did: str, executor: str) -> None: ...


def learn_from_verdict(
    book: VerdictLearner, verdict: Verdict, providers: Sequence[str], executor: str
) -> list[str]:
    """Record a final verdict in ``book``; returns the providers convicted of fraud.

    Winners confirmed by another provider gain a verified result; answers that never ran to
    an exit count a timeout; losers are convicted.
    """
    if verdict.checked:
        for index in verdict.winners:
            book.note_verified(providers[index], executor)
    for index in verdict.missing:
        book.note_timeout(providers[index], executor)
    convicted = [providers[index] for index in verdict.losers]
    for did in convicted:
        book.note_fraud(did, executor)
    return convicted
