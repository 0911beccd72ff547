"""Verification policies against cheaters: a simulation over the real policy code.

1,000 providers run 100,000 jobs; a fraction of them (10, 20, 30 %) is dishonest in one of
three ways: always lying, lying with probability 0.1, or colluding in pairs (both partners
always give the same wrong answer). Each job goes to a provider drawn at random among those
not excluded; the job's policy (``computemesh.verification.decide``) then asks for replicas
on other random providers until it accepts or gives up, and each verdict updates the
providers' reputation (``learn_from_verdict`` into a ``ReputationBook``) exactly as the
orchestrator does. A convicted provider is excluded from then on.

Per policy, fraction and cheat mode it reports: wrong results accepted per 10,000 jobs,
extra compute over running each job once, and the mean number of jobs a cheater ran
before it was excluded (null when none was).

    python bench/verification.py [--quick] [--json] [--jobs N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from computemesh.models.job import VerificationSpec
from computemesh.verification import (
    Answer,
    MemoryReputationStore,
    PolicyTuning,
    ReputationBook,
    Standing,
    decide,
    initial_replicas,
    learn_from_verdict,
    seeded_draw,
)

PROVIDERS = 1000
JOBS = 100_000
QUICK_JOBS = 5_000
FRACTIONS = (0.1, 0.2, 0.3)
CHEAT_MODES = ("always", "p0.1", "collude")
POLICIES = ("none", "redundant", "adaptive", "audit", "adaptive+audit")
EXECUTOR = "wasm"
SECONDS_PER_JOB = 1.0
"""Simulated time between jobs (reputation decays with a 30-day half-life)."""


@dataclass
class Provider:
    did: str
    mode: str = "honest"
    partner: int | None = None
    jobs_run: int = 0


@dataclass
class Run:
    policy: str
    fraction: float
    mode: str
    jobs: int
    executions: int = 0
    wrong_accepted: int = 0
    failed: int = 0
    exclusions: list[int] = field(default_factory=list)
    cheaters: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "dishonest_fraction": self.fraction,
            "cheat_mode": self.mode,
            "jobs": self.jobs,
            "wrong_accepted_per_10k": round(self.wrong_accepted * 10_000 / self.jobs, 3),
            "extra_compute": round(self.executions / self.jobs - 1.0, 4),
            "jobs_to_exclusion": round(statistics.mean(self.exclusions), 1)
            if self.exclusions
            else None,
            "cheaters_excluded": f"{len(self.exclusions)}/{self.cheaters}",
            "failed_no_quorum": self.failed,
        }


def make_providers(fraction: float, mode: str, rng: random.Random) -> list[Provider]:
    providers = [Provider(did=f"p{index:04d}") for index in range(PROVIDERS)]
    dishonest = rng.sample(range(PROVIDERS), round(PROVIDERS * fraction))
    for index in dishonest:
        providers[index].mode = mode
    if mode == "collude":
        for first, second in zip(dishonest[0::2], dishonest[1::2], strict=False):
            providers[first].partner, providers[second].partner = second, first
    return providers


def answer(provider: Provider, index: int, job: int, rng: random.Random) -> Answer:
    """What ``provider`` returns for ``job``: the true output or a wrong one."""
    truth = f"out-{job}"
    if provider.mode == "always" or (provider.mode == "p0.1" and rng.random() < 0.1):
        output = f"wrong-{job}-{index}-{rng.random()}"
    elif provider.mode == "collude":
        pair = min(index, provider.partner if provider.partner is not None else index)
        output = f"collude-{job}-{pair}"
    else:
        output = truth
    return Answer(
        provider=provider.did, status="completed", exit_code=0, outputs=(("out", output),)
    )


def simulate(policy: str, fraction: float, mode: str, jobs: int, seed: int) -> Run:
    rng = random.Random(f"{seed}:{policy}:{fraction}:{mode}")
    providers = make_providers(fraction, mode, rng)
    by_did = {provider.did: index for index, provider in enumerate(providers)}
    clock = [0.0]
    book = ReputationBook(MemoryReputationStore(), clock=lambda: clock[0])
    rules = VerificationSpec(policy=policy, k=2, n=5)
    tuning = PolicyTuning()
    active = list(range(PROVIDERS))
    initial = initial_replicas(rules, 1)
    run = Run(policy, fraction, mode, jobs, cheaters=sum(p.mode != "honest" for p in providers))

    def standing(did: str) -> Standing:
        return Standing(verified=book.record(did, EXECUTOR).verified, score=book.reputation_of(did))

    for job in range(jobs):
        clock[0] = job * SECONDS_PER_JOB
        chosen = rng.sample(active, initial)
        answers = [answer(providers[i], i, job, rng) for i in chosen]
        draw = seeded_draw(str(seed), str(job))
        while True:
            verdict = decide(
                rules,
                answers,
                initial=initial,
                executor=EXECUTOR,
                standing=standing,
                draw=draw,
                tuning=tuning,
            )
            if verdict.decision != "replicate":
                break
            others = [i for i in active if i not in chosen]
            more = rng.sample(others, verdict.extra)
            chosen += more
            answers += [answer(providers[i], i, job, rng) for i in more]
        run.executions += len(answers)
        for index in chosen:
            providers[index].jobs_run += 1
        if verdict.decision == "fail":
            run.failed += 1
        winner = answers[verdict.winners[0]].outputs if verdict.winners else None
        if verdict.decision == "accept" and winner != (("out", f"out-{job}"),):
            run.wrong_accepted += 1
        convicted = learn_from_verdict(book, verdict, [a.provider for a in answers], EXECUTOR)
        for did in set(convicted):
            index = by_did[did]
            active.remove(index)
            if providers[index].mode != "honest":
                run.exclusions.append(providers[index].jobs_run)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_JOBS} jobs per run")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    jobs = args.jobs or (QUICK_JOBS if args.quick else JOBS)
    started = time.perf_counter()
    results = []
    for fraction in FRACTIONS:
        for mode in CHEAT_MODES:
            for policy in POLICIES:
                summary = simulate(policy, fraction, mode, jobs, args.seed).summary()
                results.append(summary)
                print(
                    f"{fraction:>4.0%} {mode:<8} {policy:<15}"
                    f" wrong/10k {summary['wrong_accepted_per_10k']:>8.2f}"
                    f"  extra {summary['extra_compute']:>6.1%}"
                    f"  jobs to exclusion {summary['jobs_to_exclusion']}"
                    f"  excluded {summary['cheaters_excluded']}",
                    file=sys.stderr,
                )
    report = {
        "benchmark": "verification",
        "providers": PROVIDERS,
        "jobs": jobs,
        "seed": args.seed,
        "machine": f"{platform.machine()} {platform.system()}",
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
