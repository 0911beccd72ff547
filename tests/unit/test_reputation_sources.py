"""What feeds reputation besides verdicts: uptime from liveness, timeouts from relocation,
stake from the ledger; and attestations that another network can check."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from computemesh.identity import Identity, sign_document
from computemesh.models.errors import VerificationError
from computemesh.models.job import VerificationSpec
from computemesh.models.market import Advertisement, Capacity, Hardware, Heartbeat
from computemesh.orchestrator.liveness import LivenessBounds, LivenessTracker, Uptime
from computemesh.orchestrator.mesh_view import MeshView
from computemesh.orchestrator.verify_flow import consumer_verification
from computemesh.settlement import LedgerSettings, SqliteLedger, credits_to_units
from computemesh.store import JobRepository, ReputationRepository, open_database
from computemesh.verification import (
    REPUTATION_ATTESTATION_KIND,
    MemoryReputationStore,
    PolicyTuning,
    ReputationBook,
    ReputationStore,
    Standing,
    attest_reputation,
    audit_rate,
    check_reputation_attestation,
)

BOUNDS = LivenessBounds(suspect_after_s=2.0, dead_after_s=5.0, max_outage_s=60.0)
HARDWARE = Hardware(cpu_count=4, architecture="x86_64", memory_mb=8192, disk_mb=10_000)
FREE = Capacity(cpu=4.0, memory_mb=8192, disk_mb=10_000, gpu_count=0)
HOUR = 3600.0


# Uptime from liveness ----------------------------------------------------------------------


def test_uptime_counts_heard_time_up_and_silence_down_until_the_outage_cap() -> None:
    tracker = LivenessTracker(BOUNDS)
    tracker.heard("a", 0.0)
    for second in range(1, 11):
        tracker.heard("a", float(second))
    assert tracker.take_uptime(10.0) == {"a": Uptime(10.0, 0.0)}
    tracker.sweep(20.0)  # silent since 10: up until 12, down after
    assert tracker.take_uptime(20.0) == {"a": Uptime(2.0, 8.0)}
    # Silence past max_outage_s (60 s after the last beat) stops counting.
    assert tracker.take_uptime(500.0) == {"a": Uptime(0.0, 50.0)}
    tracker.heard("a", 600.0)  # back: the gap beyond the cap costs nothing more
    tracker.heard("a", 601.0)
    assert tracker.take_uptime(601.0) == {"a": Uptime(1.0, 0.0)}
    assert tracker.take_uptime(601.0) == {}


def test_bounds_refuse_an_outage_cap_below_death() -> None:
    with pytest.raises(ValueError, match="max_outage_s"):
        LivenessBounds(suspect_after_s=2.0, dead_after_s=5.0, max_outage_s=4.0)


@given(
    beats=st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1),
    sweeps=st.lists(st.floats(min_value=0, max_value=200, allow_nan=False)),
)
def test_uptime_does_not_depend_on_how_often_the_tracker_sweeps(
    beats: list[float], sweeps: list[float]
) -> None:
    swept, quiet = LivenessTracker(BOUNDS), LivenessTracker(BOUNDS)
    events = sorted([(t, "beat") for t in beats] + [(t, "sweep") for t in sweeps])
    for now, kind in events:
        if kind == "beat":
            swept.heard("n", now)
            quiet.heard("n", now)
        else:
            swept.sweep(now)
    end = 300.0
    first = swept.take_uptime(end).get("n", Uptime(0.0, 0.0))
    second = quiet.take_uptime(end).get("n", Uptime(0.0, 0.0))
    assert first.up_s == pytest.approx(second.up_s)
    assert first.down_s == pytest.approx(second.down_s)
    watched = end - min(beats)
    assert first.up_s + first.down_s <= watched + 1e-6


def advert() -> Advertisement:
    return Advertisement(
        hardware=HARDWARE,
        region="eu-west",
        executors=["process"],
        price_per_cpu_hour=0.1,
        sandboxed=True,
        free=FREE,
        version="test",
    )


def test_mesh_view_hands_uptime_to_its_callbacks_every_flush_interval() -> None:
    view = MeshView(BOUNDS, uptime_flush_s=10.0)
    seen: list[tuple[str, float, float]] = []
    view.on_uptime.append(lambda did, up, down: seen.append((did, up, down)))
    chatty, quiet = Identity.generate().did, Identity.generate().did
    view.advertised(chatty, advert(), 0.0)
    view.advertised(quiet, advert(), 0.0)
    for second in range(1, 10):
        view.heartbeat(chatty, Heartbeat(seq=second, free=FREE, running=0), float(second))
        view.sweep(float(second))
    assert seen == []  # the first flush is due 10 s after the first sweep (at 1 s)
    view.sweep(11.0)
    assert sorted(seen) == sorted([(chatty, 11.0, 0.0), (quiet, 2.0, 9.0)])
    seen.clear()
    view.flush_uptime(12.0)
    assert dict((did, (up, down)) for did, up, down in seen)[quiet] == (0.0, 1.0)


# Uptime and timeouts in the score -------------------------------------------------------


@pytest.fixture(params=["memory", "sql"])
def store(request: pytest.FixtureRequest) -> ReputationStore:
    if request.param == "memory":
        return MemoryReputationStore()
    return ReputationRepository(open_database("sqlite://"))


def test_uptime_scales_the_score_and_decays(store: ReputationStore) -> None:
    now = [1_000.0]
    book = ReputationBook(store, half_life_s=HOUR, clock=lambda: now[0])
    steady, flaky = "did:key:zSteady", "did:key:zFlaky"
    for did in (steady, flaky):
        for _ in range(8):
            book.note_verified(did, "wasm")
    book.note_uptime(steady, 10 * HOUR, 0.0)
    book.note_uptime(flaky, 6 * HOUR, 4 * HOUR)
    assert book.reputation_of(steady) == pytest.approx(0.9)
    # (6 h + 1 h prior) / (10 h + 1 h prior) of the record's 0.9
    assert book.reputation_of(flaky) == pytest.approx(0.9 * 7 / 11)
    assert store.providers() == [flaky, steady]
    now[0] += HOUR
    assert book.uptime(flaky).down_s == pytest.approx(2 * HOUR)
    with pytest.raises(ValueError, match="non-negative"):
        book.note_uptime(flaky, -1.0, 0.0)


def test_a_provider_watched_but_never_judged_starts_from_half_times_availability() -> None:
    book = ReputationBook(MemoryReputationStore())
    book.note_uptime("did:key:zNew", 0.0, HOUR)
    assert book.reputation_of("did:key:zNew") == pytest.approx(0.5 * 0.5)
    assert book.reputation_of("did:key:zNever") == 0.5


def test_the_flow_counts_timeouts_and_uptime_and_tells_matching() -> None:
    jobs = JobRepository(open_database("sqlite://"))
    flow = consumer_verification(jobs, Identity.generate())
    changed: list[str] = []
    flow.on_reputation.append(changed.append)
    flow.note_timeout("did:key:zGone", "process")
    flow.note_uptime("did:key:zGone", 0.0, HOUR)
    assert changed == ["did:key:zGone", "did:key:zGone"]
    assert flow.reputation.record("did:key:zGone", "process").timeouts == pytest.approx(1.0)
    assert flow.reputation_of("did:key:zGone") == pytest.approx(1 / 3 * 0.5)


# Stake lowers the audit rate --------------------------------------------------------------


def test_more_stake_lowers_the_audit_rate() -> None:
    rules = VerificationSpec(policy="audit")
    tuning = PolicyTuning()
    rates = [
        audit_rate(rules, Standing(verified=0.0, score=0.5, stake=stake), tuning)
        for stake in (
            None,
            0,
            credits_to_units(10),
            credits_to_units(100),
            credits_to_units(10_000),
        )
    ]
    assert rates[0] == rates[1] == pytest.approx(0.01 + 0.49 * 0.5)
    assert rates[1] > rates[2] > rates[3] > rates[4] >= tuning.audit_floor
    assert rates[3] == pytest.approx(0.01 + 0.49 * 0.5 / 2)  # the reference stake halves it
    ignored = PolicyTuning(stake_reference=0)
    assert audit_rate(rules, Standing(0.0, 0.5, credits_to_units(100)), ignored) == rates[0]


def test_the_consumer_reads_stake_from_its_ledger(tmp_path: Path) -> None:
    consumer, treasury = Identity.generate(), Identity.generate()
    ledger = SqliteLedger.open(
        tmp_path / "ledger.db", consumer, LedgerSettings(treasury=treasury.did)
    )
    staked, bare = Identity.generate().did, Identity.generate().did
    ledger.deposit(staked, credits_to_units(200), deposit_id="d1")
    ledger.stake(staked, credits_to_units(200), stake_id="s1")
    flow = consumer_verification(JobRepository(open_database("sqlite://")), consumer, ledger)
    assert flow.standing(staked, "process").stake == credits_to_units(200)
    assert flow.standing(bare, "process").stake == 0
    rules, tuning = VerificationSpec(policy="audit"), flow.settings.tuning
    staked_rate = audit_rate(rules, flow.standing(staked, "process"), tuning)
    bare_rate = audit_rate(rules, flow.standing(bare, "process"), tuning)
    assert staked_rate < bare_rate
    without = consumer_verification(JobRepository(open_database("sqlite://")), consumer)
    assert without.standing(staked, "process").stake is None


# Attestations -----------------------------------------------------------------------------


def test_attestations_carry_uptime_and_expire() -> None:
    issuer = Identity.generate()
    now = [1_000_000.0]
    book = ReputationBook(MemoryReputationStore(), clock=lambda: now[0])
    book.note_verified("did:key:zA", "wasm")
    book.note_uptime("did:key:zA", HOUR, 0.0)
    document = attest_reputation(issuer, book, "did:key:zA", valid_for_s=HOUR)
    checked = check_reputation_attestation(document, issuer=issuer.did, now=now[0] + 10)
    assert (checked.up_s, checked.down_s) == (HOUR, 0.0)
    assert checked.expires_at_ms == int((now[0] + HOUR) * 1000)
    with pytest.raises(VerificationError, match="expired") as expired:
        check_reputation_attestation(document, now=now[0] + 2 * HOUR)
    assert expired.value.code == "expired_attestation"
    with pytest.raises(VerificationError, match="in the future"):
        check_reputation_attestation(document, now=now[0] - HOUR)
    with pytest.raises(ValueError, match="positive"):
        attest_reputation(issuer, book, "did:key:zA", valid_for_s=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"timeouts": -1.0}, "timeouts is negative"),
        ({"expires_at_ms": 0}, "expires before it was issued"),
        ({"up_s": "long"}, "up_s is not float"),
        ({"extra": 1}, "fields differ"),
    ],
)
def test_malformed_attestations_are_refused_even_when_signed(
    change: dict[str, object], message: str
) -> None:
    issuer = Identity.generate()
    book = ReputationBook(MemoryReputationStore())
    body = {**attest_reputation(issuer, book, "did:key:zA")["body"], **change}
    document = sign_document(issuer, REPUTATION_ATTESTATION_KIND, body)
    with pytest.raises(VerificationError, match=message) as refused:
        check_reputation_attestation(document)
    assert refused.value.code == "bad_attestation"
