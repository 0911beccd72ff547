"""The job's verification policy applied to its judged outcome, with what follows from it.

``judge_outcome`` proves each signed result; ``VerificationFlow.apply`` then runs the job's
policy (``verification.decide``) over the proven results once every placed replica has
answered. The verdict either asks for more replicas on other providers (``Outcome.more``,
placed by ``place_more_replicas``) or ends the job; a final verdict updates reputation
(confirmed providers gain, missing ones count a timeout) and turns each losing result into
a stored, signed fraud record, the provider excluded from placement from then on and, with
a ledger, its stake slashed (``FraudSink``).

Outside verdicts, the orchestrator feeds the same book what liveness tracking sees: an
allocation moved off a provider that died, went silent or lost it counts a timeout
(``note_timeout``, called by recovery) and each provider's seconds up and down fold into
its score (``note_uptime``, called by the mesh view). With ``stake_of`` (the ledger's
stake, ``stake_in``), stake lowers the audit rate (``PolicyTuning.stake_reference``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from computemesh.identity import Identity
from computemesh.identity.did import abbreviate_did
from computemesh.identity.keystore import resolve_home
from computemesh.models.errors import MeshError, NoProviderError
from computemesh.models.job import JobSpec, VerificationSpec
from computemesh.models.market import JobResult
from computemesh.models.validation import parse_job_spec
from computemesh.orchestrator.outcome import Outcome
from computemesh.settlement import UNITS_PER_CREDIT, Ledger
from computemesh.store import JobRecord, JobRepository
from computemesh.verification import (
    FraudFinding,
    FraudSink,
    PolicyTuning,
    ReputationBook,
    Standing,
    Verdict,
    answer_of,
    decide,
    initial_replicas,
    judge_fraud,
    learn_from_verdict,
    seeded_draw,
    slash_through_ledger,
)
from computemesh.verification.policy import ProofCheck
from computemesh.verification.zk import ZkKeys, check_result_proof, without_proof, zk_job_of

if TYPE_CHECKING:
    from computemesh.orchestrator.orchestrator import Orchestrator

log = logging.getLogger(__name__)


class FraudRecords(Protocol):
    """Where fraud records are kept (``store.FraudRepository``)."""

    def add(self, finding: FraudFinding) -> bool:
        """Store it; False when its contract already has one (nothing changes then)."""
        ...

    def for_job(self, job_id: str) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class VerificationSettings:
    """The network's verification defaults.

    ``default`` applies to jobs whose spec names no policy. ``seed`` fixes every random
    decision (tests, the simulation); left out, each orchestrator draws its own.
    """

    default: VerificationSpec = field(default_factory=VerificationSpec)
    tuning: PolicyTuning = field(default_factory=PolicyTuning)
    seed: str | None = None
    slash_units: int = UNITS_PER_CREDIT
    """Stake slashed per proven fraud when a ledger is configured."""


class VerificationFlow:
    def __init__(
        self,
        *,
        judge: Identity,
        reputation: ReputationBook,
        fraud: FraudRecords,
        settings: VerificationSettings | None = None,
        on_fraud: FraudSink | None = None,
        stake_of: Callable[[str], int | None] | None = None,
        zk_dir: Path | None = None,
    ) -> None:
        self.judge = judge
        self.reputation = reputation
        self.fraud = fraud
        self.settings = settings or VerificationSettings()
        self.on_fraud = on_fraud
        self.stake_of = stake_of
        self._seed = self.settings.seed or secrets.token_hex(16)
        self._expected: dict[str, int] = {}
        self.zk_dir = zk_dir
        """Circuits and verification keys of zk jobs; default ``<home>/zk``."""
        self.on_reputation: list[Callable[[str], None]] = []
        """Callbacks called with each provider DID whose reputation a verdict changed."""

    def rules_for(self, spec: JobSpec) -> VerificationSpec:
        """The job's rules; ``SpecError`` for a policy this network cannot apply."""
        rules = spec.verification or self.settings.default
        if "zk" in rules.policies:
            self._prepare_zk(spec)
        return rules

    def _zk_keys(self) -> ZkKeys:
        return ZkKeys(self.zk_dir or resolve_home() / "zk")

    def _prepare_zk(self, spec: JobSpec) -> None:
        """The job's circuit and verification key, made once per model (``verification.zk``);
        ``SpecError`` when ezkl is missing or the model is too large to prove."""
        keys = self._zk_keys()
        keys.setup(keys.circuit(zk_job_of(spec)), proving=False)

    def _proof_checks(
        self, spec: JobSpec, rules: VerificationSpec, results: list[JobResult]
    ) -> list[ProofCheck] | None:
        if "zk" not in rules.policies:
            return None
        keys = self._zk_keys()
        return [check_result_proof(keys, spec, result) for result in results]

    def initial_replicas(self, spec: JobSpec) -> int:
        rules = self.rules_for(spec)
        if rules.policies == {"none"}:
            return spec.replicas
        return initial_replicas(rules, spec.replicas)

    def replicas_for(self, job_id: str, spec: JobSpec) -> int:
        """The replicas the job needs placed: its initial ones, or more once a verdict
        asked for more (``expect``)."""
        return max(self.initial_replicas(spec), self._expected.get(job_id, 0))

    def excluded(self) -> set[str]:
        """Providers caught in a fraud: never placed again."""
        return self.reputation.excluded()

    def reputation_of(self, did: str) -> float:
        """This consumer's view of a provider, 0..1, for matching to use."""
        return self.reputation.reputation_of(did)

    def apply(self, record: JobRecord, outcome: Outcome) -> Outcome:
        """``outcome`` once the job's policy has judged it (unchanged while replicas run)."""
        if not outcome.final:
            return outcome
        spec = parse_job_spec(record.spec)
        rules = self.rules_for(spec)
        if rules.policies == {"none"}:
            return outcome
        if record.is_final:
            return _as_judged(record, outcome)
        if len(outcome.results) < self.replicas_for(record.job_id, spec):
            return replace(outcome, final=False, status="running", verified=False, reason="")
        results = [JobResult.model_validate(document["body"]) for document in outcome.results]
        proofs = self._proof_checks(spec, rules, results)
        verdict = decide(
            rules,
            [answer_of(without_proof(result) if proofs else result) for result in results],
            initial=initial_replicas(rules, spec.replicas),
            executor=spec.executor,
            standing=lambda did: self.standing(did, spec.executor),
            draw=seeded_draw(self._seed, record.job_id),
            tuning=self.settings.tuning,
            proofs=proofs,
        )
        log.info("job %s: %s (%s)", record.job_id, verdict.decision, verdict.reason)
        if verdict.decision == "replicate":
            reason = f"verifying: {verdict.reason}, {verdict.extra} more replica(s)"
            return replace(
                outcome,
                final=False,
                status="running",
                verified=False,
                reason=reason,
                more=verdict.extra,
            )
        self._learn(record.job_id, spec.executor, outcome.results, results, verdict)
        return _final_outcome(outcome, results, verdict)

    def expect(self, job_id: str, replicas: int) -> None:
        """Judge the job only once ``replicas`` results are in (more are being placed)."""
        self._expected[job_id] = replicas

    def standing(self, did: str, executor: str) -> Standing:
        """What the policy knows of ``did`` with ``executor``: record, score and stake."""
        return Standing(
            verified=self.reputation.record(did, executor).verified,
            score=self.reputation.reputation_of(did),
            stake=self.stake_of(did) if self.stake_of else None,
        )

    def note_timeout(self, did: str, executor: str) -> None:
        """``did`` held an allocation it never answered for (it died, went silent or lost
        it): one timeout in its record."""
        self.reputation.note_timeout(did, executor)
        self._reputation_changed(did)

    def note_uptime(self, did: str, up_s: float, down_s: float) -> None:
        """``did`` was seen heartbeating for ``up_s`` and silent for ``down_s`` more seconds."""
        self.reputation.note_uptime(did, up_s, down_s)
        self._reputation_changed(did)

    def _reputation_changed(self, did: str) -> None:
        for callback in self.on_reputation:
            callback(did)

    def _learn(
        self,
        job_id: str,
        executor: str,
        documents: list[dict[str, Any]],
        results: list[JobResult],
        verdict: Verdict,
    ) -> None:
        providers = [result.provider for result in results]
        learn_from_verdict(self.reputation, verdict, providers, executor)
        for did in dict.fromkeys(providers):
            self._reputation_changed(did)
        winning = [documents[index] for index in verdict.winners]
        for index in verdict.losers:
            finding = judge_fraud(
                self.judge,
                job_id=job_id,
                executor=executor,
                losing_result=documents[index],
                winning_results=winning,
                reason=verdict.reason,
            )
            self._record(finding)

    def _record(self, finding: FraudFinding) -> None:
        if not self.fraud.add(finding):
            return
        log.warning(
            "job %s: %s returned a wrong result; excluded",
            finding.job_id,
            abbreviate_did(finding.provider),
        )
        if self.on_fraud is not None:
            self.on_fraud(finding)


def _as_judged(record: JobRecord, outcome: Outcome) -> Outcome:
    """A result arriving after the verdict changes nothing: the stored verdict stands."""
    return replace(
        outcome,
        results=record.results,
        status=record.status,
        verified=bool(record.verified),
        reason=record.reason,
    )


def _final_outcome(outcome: Outcome, results: list[JobResult], verdict: Verdict) -> Outcome:
    lost = [results[index].contract_id for index in verdict.losers]
    if verdict.decision == "accept" and verdict.winners:
        winner = results[verdict.winners[0]]
        status = "completed" if winner.status == "completed" else "failed"
        reason = winner.reason or ("" if status == "completed" else f"exit code {winner.exit_code}")
        return replace(outcome, status=status, verified=True, reason=reason, lost=lost)
    failures = "; ".join(
        f"{abbreviate_did(result.provider)}: {result.status} {result.reason}".strip()
        for result in results
    )
    return replace(
        outcome, status="failed", verified=False, reason=f"{verdict.reason}: {failures}", lost=lost
    )


def stake_in(ledger: Ledger) -> Callable[[str], int | None]:
    """A provider's stake as ``ledger`` holds it; None when it cannot be read (the audit
    rate then ignores stake)."""

    def stake_of(did: str) -> int | None:
        try:
            return ledger.balance(did).staked
        except MeshError as exc:
            log.warning("stake of %s unknown: %s", abbreviate_did(did), exc.message)
            return None

    return stake_of


def consumer_verification(
    jobs: JobRepository,
    judge: Identity,
    ledger: Ledger | None = None,
    *,
    settings: VerificationSettings | None = None,
    stakes: Ledger | None = None,
) -> VerificationFlow:
    """Verification over the consumer's store, under ``settings`` (the network's default
    policy and seed).

    With ``ledger``, each proven fraud slashes the provider's stake through it, signed by
    ``judge``: the ledger takes it only when ``judge`` is one of its arbiters (see
    ``app.ledger``), and logs the refusal otherwise. The stake read from ``stakes`` (default
    ``ledger``) lowers each provider's audit rate.
    """
    settings = settings or VerificationSettings()
    stakes = stakes or ledger
    return VerificationFlow(
        judge=judge,
        reputation=ReputationBook(jobs.reputation),
        fraud=jobs.fraud,
        settings=settings,
        on_fraud=None
        if ledger is None
        else slash_through_ledger(ledger, judge, amount=settings.slash_units),
        stake_of=None if stakes is None else stake_in(stakes),
    )


async def place_more_replicas(orchestrator: Orchestrator, job_id: str, count: int) -> None:
    """Contract ``count`` more providers, none already on the job; fail the job if none can."""
    record = orchestrator.jobs.get(job_id)
    used = frozenset(contract["terms"]["provider"] for contract in record.contracts)
    orchestrator.verification.expect(job_id, len(record.contracts) + count)
    try:
        await orchestrator.place(job_id, exclude=used, count=count)
    except NoProviderError as exc:
        orchestrator.jobs.record_outcome(
            job_id,
            results=record.results,
            status="failed",
            verified=False,
            reason=f"verification needs {count} more replica(s) on other providers: {exc.message}",
        )
