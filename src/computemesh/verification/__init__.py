"""Verification: policies, result comparison, reputation, fraud records and zk proofs.

Pure where it can be: ``decide`` (policy.py) takes the answers, what is known of the
providers and a seeded draw, and returns a ``Verdict``; the orchestrator
(``orchestrator/verify_flow.py``) and the simulation (``bench/verification.py``) both run it.
"""

from computemesh.verification.compare import Answer, answer_of, answers_agree, group_answers
from computemesh.verification.fraud import (
    FRAUD_VERDICT_KIND,
    FraudFinding,
    FraudSink,
    check_fraud_finding,
    judge_fraud,
    slash_through_ledger,
)
from computemesh.verification.policy import (
    Draw,
    PolicyTuning,
    Standing,
    Verdict,
    VerdictLearner,
    adaptive_rate,
    audit_rate,
    decide,
    initial_replicas,
    learn_from_verdict,
    quorum_size,
    seeded_draw,
)
from computemesh.verification.reputation import (
    REPUTATION_ATTESTATION_KIND,
    MemoryReputationStore,
    ProviderRecord,
    ReputationAttestation,
    ReputationBook,
    ReputationStore,
    UptimeRecord,
    attest_reputation,
    check_reputation_attestation,
    score_of,
)

__all__ = [
    "FRAUD_VERDICT_KIND",
    "REPUTATION_ATTESTATION_KIND",
    "Answer",
    "Draw",
    "FraudFinding",
    "FraudSink",
    "MemoryReputationStore",
    "PolicyTuning",
    "ProviderRecord",
    "ReputationAttestation",
    "ReputationBook",
    "ReputationStore",
    "Standing",
    "UptimeRecord",
    "Verdict",
    "VerdictLearner",
    "adaptive_rate",
    "answer_of",
    "answers_agree",
    "attest_reputation",
    "audit_rate",
    "check_fraud_finding",
    "check_reputation_attestation",
    "decide",
    "group_answers",
    "initial_replicas",
    "judge_fraud",
    "learn_from_verdict",
    "quorum_size",
    "score_of",
    "seeded_draw",
    "slash_through_ledger",
]
