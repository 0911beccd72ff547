"""The node index: incremental updates, reservations, staleness, implausible adverts."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from computemesh.matching import NodeIndex, match_job, unmet_requirements
from computemesh.models.job import JobSpec
from computemesh.models.market import Advertisement, Capacity
from tests.unit.test_matching_fleets import DIDS, FAST, adverts

A, B, C = DIDS[:3]


def advert(**changes: object) -> Advertisement:
    data: dict[str, object] = {
        "hardware": {
            "cpu_count": 4,
            "architecture": "x86_64",
            "memory_mb": 8192,
            "disk_mb": 10_000,
        },
        "region": "eu-west",
        "executors": ["process"],
        "price_per_cpu_hour": 0.1,
        "sandboxed": True,
        "free": {"cpu": 4, "memory_mb": 8192, "disk_mb": 10_000, "gpu_count": 0},
        "version": "0.1.0",
    }
    return Advertisement.model_validate(data | changes)


def spec(**changes: object) -> JobSpec:
    return JobSpec.model_validate({"name": "t", "command": ["true"]} | changes)


def test_upsert_replaces_and_remove_forgets() -> None:
    index = NodeIndex(capacity=1)
    assert index.upsert(A, advert(), seen_at=1.0) == []
    assert index.upsert(B, advert(region="us-east"), seen_at=1.0) == []
    assert index.upsert(A, advert(region="us-east"), seen_at=2.0) == []
    assert len(index) == 2
    east = spec(constraints={"regions": ["us-east"]})
    assert sorted(c.provider for c in match_job(index, east)) == sorted([A, B])
    assert index.remove(A) and not index.remove(A)
    assert [c.provider for c in match_job(index, east)] == [B]
    assert index.upsert(C, advert(), seen_at=3.0) == []
    assert index.providers() == sorted([B, C])


def test_reservations_subtract_capacity_until_released() -> None:
    index = NodeIndex()
    index.upsert(A, advert(), seen_at=0.0)
    big = spec(resources={"cpu": 3})
    assert index.reserve("job-1", A, JobSpec.model_validate(big.model_dump()).resources)
    assert index.reserve("job-1", A, big.resources)
    assert index.free_of(A)[0] == 1.0
    assert match_job(index, big) == []
    assert not index.reserve("job-2", A, big.resources)
    index.upsert(A, advert(price_per_cpu_hour=0.2), seen_at=1.0)
    assert index.free_of(A)[0] == 1.0
    assert index.release("job-1") and not index.release("job-1")
    assert [c.provider for c in match_job(index, big)] == [A]


def test_heartbeat_refreshes_free_capacity_and_refuses_impossible_values() -> None:
    index = NodeIndex()
    index.upsert(A, advert(), seen_at=0.0)
    assert index.heartbeat(A, Capacity(cpu=1, memory_mb=100, disk_mb=10, gpu_count=0), seen_at=5.0)
    assert index.free_of(A) == (1.0, 100.0, 10.0, 0.0)
    assert not index.heartbeat(A, Capacity(cpu=9, memory_mb=1, disk_mb=1, gpu_count=0), seen_at=6.0)
    assert not index.heartbeat(B, Capacity(cpu=1, memory_mb=1, disk_mb=1, gpu_count=0), seen_at=6.0)


def test_drop_stale_removes_nodes_not_seen_recently() -> None:
    index = NodeIndex()
    index.upsert(A, advert(), seen_at=100.0)
    index.upsert(B, advert(), seen_at=150.0)
    index.heartbeat(A, advert().free, seen_at=170.0)
    index.upsert(C, advert(), seen_at=120.0)
    assert index.drop_stale(now=200.0, max_age=60.0) == [C]
    assert index.providers() == sorted([A, B])


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"free": {"cpu": 8, "memory_mb": 1, "disk_mb": 1, "gpu_count": 0}}, "free cpu 8 exceeds"),
        ({"free": {"cpu": 1, "memory_mb": 9000, "disk_mb": 1, "gpu_count": 0}}, "free memory_mb"),
        ({"free": {"cpu": 1, "memory_mb": 1, "disk_mb": 1, "gpu_count": 2}}, "free gpu_count 2"),
        ({"latency_ms": {"eu-west": float("inf")}}, "latency_ms to eu-west"),
        (
            {
                "hardware": {
                    "cpu_count": 4,
                    "architecture": "x86_64",
                    "memory_mb": 2**40,
                    "disk_mb": 1,
                }
            },
            "memory_mb 1099511627776 is outside",
        ),
    ],
)
def test_implausible_adverts_are_dropped_and_logged(
    changes: dict[str, object], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    index = NodeIndex()
    index.upsert(A, advert(), seen_at=0.0)
    bad = advert(**changes)
    with caplog.at_level(logging.WARNING, logger="computemesh.matching.index"):
        problems = index.upsert(A, bad, seen_at=1.0)
    assert any(problem in p for p in problems), problems
    assert A not in index
    assert problem in caplog.text
    assert any(problem in reason for reason in unmet_requirements(spec(), bad, A))


def test_a_did_that_is_not_a_did_key_is_refused() -> None:
    assert NodeIndex().upsert("node-7", advert(), seen_at=0.0) == ["'node-7' is not a did:key"]


def test_success_rate_is_kept_across_re_advertisement() -> None:
    index = NodeIndex()
    index.upsert(A, advert(), seen_at=0.0)
    index.upsert(B, advert(), seen_at=0.0)
    for _ in range(4):
        index.record_outcome(A, succeeded=True)
        index.record_outcome(B, succeeded=False)
    index.upsert(A, advert(), seen_at=1.0)
    ranked = match_job(index, spec(constraints={"preferences": {"price": 0, "success_rate": 1}}))
    assert [c.provider for c in ranked] == [A, B]
    assert ranked[0].breakdown.qualities["success_rate"] == pytest.approx(5 / 6)


def test_region_latency_takes_the_larger_median_direction() -> None:
    index = NodeIndex()
    index.upsert(A, advert(latency_ms={"eu-west": 2.0, "us-east": 70.0}), seen_at=0.0)
    index.upsert(B, advert(latency_ms={"us-east": 90.0}), seen_at=0.0)
    index.upsert(C, advert(region="us-east", latency_ms={"eu-west": 75.0}), seen_at=0.0)
    west, east = index.regions.find("eu-west"), index.regions.find("us-east")
    estimates = index.region_latency()
    assert estimates[west, east] == estimates[east, west] == 80.0
    assert estimates[west, west] == 2.0
    assert estimates[east, east] == float("inf")


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["upsert", "remove", "reserve", "release"]),
            st.integers(0, 4),
            adverts(),
        ),
        max_size=25,
    )
)
def test_index_follows_a_plain_model_through_any_updates(
    operations: list[tuple[str, int, dict[str, object]]],
) -> None:
    index = NodeIndex(capacity=2)
    nodes: dict[str, Advertisement] = {}
    held: dict[str, tuple[str, tuple[float, float, float, float]]] = {}
    for step, (kind, number, data) in enumerate(operations):
        did = DIDS[number]
        if kind == "upsert":
            nodes[did] = Advertisement.model_validate(data)
            assert index.upsert(did, nodes[did], seen_at=0.0) == []
        elif kind == "remove":
            assert index.remove(did) == (nodes.pop(did, None) is not None)
            held = {key: h for key, h in held.items() if h[0] != did}
        elif kind == "reserve" and did in nodes:
            amount = (0.5, 100.0, 10.0, 0.0)
            fits = all(a <= f for a, f in zip(amount, index.free_of(did), strict=True))
            assert index.reserve(f"key-{step}", did, amount) == fits
            if fits:
                held[f"key-{step}"] = (did, amount)
        elif kind == "release" and held:
            key = sorted(held)[0]
            assert index.release(key)
            del held[key]
    assert index.providers() == sorted(nodes)
    for did, node in nodes.items():
        taken = [sum(h[1][r] for h in held.values() if h[0] == did) for r in range(4)]
        advertised = (node.free.cpu, node.free.memory_mb, node.free.disk_mb, node.free.gpu_count)
        expected = tuple(max(a - t, 0.0) for a, t in zip(advertised, taken, strict=True))
        assert index.free_of(did) == pytest.approx(expected)
