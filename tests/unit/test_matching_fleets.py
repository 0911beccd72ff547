"""Hypothesis strategies for small heterogeneous fleets and jobs, shared by the matching tests.

Values come from small sets so that jobs and nodes often almost match: equal amounts,
shared regions, cities written in another case, GPUs that meet some details and not others.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from computemesh.matching import NodeIndex, implausible_values
from computemesh.models.job import JobSpec
from computemesh.models.market import Advertisement

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
DIDS = [f"did:key:z6MkNode{BASE58[n] * 12}" for n in range(12)]
REGIONS = ["eu-west", "eu-central", "us-east"]
COUNTRIES = ["IE", "DE", "US"]
CITIES = ["Dublin", "berlin", "Berlin", "Boston"]
ORGANISATIONS = ["acme", "beta", "gamma"]
GPU_KINDS = [
    {
        "model": "NVIDIA A100-SXM4-40GB",
        "vendor": "nvidia",
        "vram_mb": 40960,
        "compute_capability": "8.0",
    },
    {"model": "Tesla T4", "vendor": "nvidia", "vram_mb": 15360, "compute_capability": "7.5"},
    {"model": "AMD Instinct MI250", "vendor": "amd", "vram_mb": 65536, "compute_capability": None},
]
FAST = settings(max_examples=35, deadline=None)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def some(values: list[Any], *, max_size: int = 2) -> st.SearchStrategy[list[Any]]:
    """Usually empty, otherwise a few distinct values."""
    return st.one_of(
        st.just([]), st.lists(st.sampled_from(values), min_size=1, max_size=max_size, unique=True)
    )


@st.composite
def adverts(draw: st.DrawFn, *, busy: bool = True) -> dict[str, Any]:
    """A node; with ``busy`` False it offers ``process`` and network, most of its capacity
    and reports its latency to every region."""
    cpus = draw(st.integers(1, 8))
    memory = draw(st.sampled_from([512, 2048, 8192]))
    disk = draw(st.sampled_from([100, 5000, 50_000]))
    gpus = draw(st.lists(st.sampled_from(GPU_KINDS), max_size=3))
    share = st.sampled_from([0.0, 0.25, 0.5, 1.0] if busy else [0.5, 1.0])
    executors = st.lists(st.sampled_from(["process", "wasm"]), max_size=2, unique=True)
    return {
        "hardware": {
            "cpu_count": cpus,
            "architecture": draw(st.sampled_from(["x86_64", "aarch64"])),
            "memory_mb": memory,
            "disk_mb": disk,
            "gpus": gpus,
        },
        "region": draw(st.sampled_from(REGIONS)),
        "executors": draw(executors) if busy else ["process"],
        "price_per_cpu_hour": draw(st.sampled_from([0.05, 0.1, 0.2, 0.4])),
        "sandboxed": True,
        "network": draw(st.booleans()) if busy else True,
        "free": {
            "cpu": draw(st.integers(0 if busy else cpus, 2 * cpus)) / 2,
            "memory_mb": int(memory * draw(share)),
            "disk_mb": int(disk * draw(share)),
            "gpu_count": draw(st.integers(0, len(gpus))),
        },
        "version": "0.1.0",
        "country": draw(maybe(st.sampled_from(COUNTRIES))),
        "city": draw(maybe(st.sampled_from(CITIES))),
        "organisations": draw(some(ORGANISATIONS)),
        "reputation": draw(maybe(st.sampled_from([0.2, 0.5, 0.8, 1.0]))),
        "latency_ms": draw(
            st.dictionaries(
                st.sampled_from(REGIONS),
                st.sampled_from([1.0, 5.0, 20.0, 80.0]),
                min_size=0 if busy else 3,
                max_size=3,
            )
        ),
    }


def fleets(
    min_size: int = 1, max_size: int = 10, *, busy: bool = True
) -> st.SearchStrategy[list[tuple[str, Advertisement]]]:
    """Nodes with distinct DIDs."""
    return st.lists(adverts(busy=busy), min_size=min_size, max_size=max_size).map(
        lambda found: [
            (DIDS[n], Advertisement.model_validate(data)) for n, data in enumerate(found)
        ]
    )


@st.composite
def gpu_details(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(maybe(st.sampled_from(["7.5", "8.0"])))
    high = draw(maybe(st.sampled_from(["8.0", "9.0"])))
    return {
        "gpu_count": draw(st.integers(1, 2)),
        "gpu_model": draw(maybe(st.sampled_from(["A100", "t4", "MI250"]))),
        "gpu_vendor": draw(maybe(st.sampled_from(["nvidia", "AMD"]))),
        "vram_mb": draw(st.sampled_from([0, 16_000, 40_000])),
        "min_compute_capability": low,
        "max_compute_capability": high,
    }


@st.composite
def constraints(draw: st.DrawFn) -> dict[str, Any]:
    regions = draw(some(REGIONS))
    countries = draw(some(COUNTRIES))
    cities = draw(some(CITIES))
    providers = draw(some(DIDS[:6], max_size=4))
    folded = {city.casefold() for city in cities}
    data: dict[str, Any] = {
        "regions": regions,
        "exclude_regions": [r for r in draw(some(REGIONS)) if r not in regions],
        "countries": countries,
        "exclude_countries": [c for c in draw(some(COUNTRIES)) if c not in countries],
        "cities": cities,
        "exclude_cities": [c for c in draw(some(CITIES)) if c.casefold() not in folded],
        "architectures": draw(some(["x86_64", "aarch64"])),
        "max_price_per_cpu_hour": draw(maybe(st.sampled_from([0.1, 0.2]))),
        "providers": providers,
        "exclude_providers": [d for d in draw(some(DIDS[:6])) if d not in providers],
        "organisations": draw(some(ORGANISATIONS)),
        "min_reputation": draw(maybe(st.sampled_from([0.5, 0.8]))),
        "preferences": {
            "price": draw(st.sampled_from([0.0, 1.0, 3.0])),
            "reputation": draw(st.sampled_from([0.0, 0.5])),
            "near": draw(maybe(st.sampled_from(REGIONS))),
        },
    }
    pinned = draw(maybe(st.sampled_from(DIDS[:6])))
    allowed = not providers or pinned in providers
    if pinned is not None and pinned not in data["exclude_providers"] and allowed:
        data["pinned_node"] = pinned
    return data


@st.composite
def job_specs(draw: st.DrawFn, name: str = "job", replicas: int = 3) -> JobSpec:
    resources: dict[str, Any] = {
        "cpu": draw(st.sampled_from([0.5, 1, 2, 4])),
        "memory_mb": draw(st.sampled_from([256, 1024, 4096])),
        "disk_mb": draw(st.sampled_from([1, 1000, 20_000])),
    }
    if draw(st.integers(0, 3)) == 0:
        resources |= draw(gpu_details())
    rules = draw(st.one_of(st.just({}), constraints()))
    return JobSpec.model_validate(
        {
            "name": name,
            "command": ["true"],
            "resources": resources,
            "constraints": rules,
            "replicas": draw(st.integers(1, replicas)),
            "network": draw(st.integers(0, 3)) == 0,
        }
    )


def jobs(max_size: int = 8) -> st.SearchStrategy[list[tuple[str, JobSpec]]]:
    """``(job id, spec)`` pairs with distinct ids."""
    return st.lists(job_specs(), min_size=1, max_size=max_size).map(
        lambda specs: [(f"job-{n:03d}", spec) for n, spec in enumerate(specs)]
    )


def index_of(fleet: list[tuple[str, Advertisement]], *, seen_at: float = 0.0) -> NodeIndex:
    index = NodeIndex(capacity=4)
    for did, advert in fleet:
        assert index.upsert(did, advert, seen_at=seen_at) == []
    return index


@FAST
@given(fleets())
def test_generated_fleets_are_plausible_and_indexed(fleet: list[tuple[str, Advertisement]]) -> None:
    for _, advert in fleet:
        assert implausible_values(advert) == []
    index = index_of(fleet)
    assert len(index) == len(fleet)
    assert index.providers() == sorted(did for did, _ in fleet)


@FAST
@given(job_specs())
def test_generated_jobs_validate(spec: JobSpec) -> None:
    assert JobSpec.model_validate(spec.model_dump()) == spec
