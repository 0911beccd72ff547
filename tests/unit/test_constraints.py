"""Hard requirements checked the same way by nodes (to bid) and consumers (to accept)."""

from __future__ import annotations

from computemesh.matching import max_charge, rank_bids, unmet_requirements
from computemesh.models.job import JobSpec
from computemesh.models.market import Advertisement, Bid, Capacity, GpuInfo, Hardware, Rates

PROVIDER = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
OTHER = "did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf"


def offer(**overrides: object) -> Advertisement:
    base: dict[str, object] = {
        "hardware": Hardware(cpu_count=4, architecture="x86_64", memory_mb=8192, disk_mb=10_000),
        "region": "eu-west",
        "executors": ["process"],
        "price_per_cpu_hour": 0.1,
        "sandboxed": True,
        "free": Capacity(cpu=2, memory_mb=4096, disk_mb=10_000, gpu_count=0),
        "version": "0.1.0",
    }
    return Advertisement.model_validate({**base, **overrides})


def spec(**overrides: object) -> JobSpec:
    return JobSpec.model_validate({"name": "t", "command": ["true"], **overrides})


def test_fitting_offer_has_no_unmet_requirements() -> None:
    assert unmet_requirements(spec(), offer(), PROVIDER) == []


def test_permanent_and_transient_shortfalls_are_told_apart() -> None:
    too_big = unmet_requirements(spec(resources={"cpu": 8}), offer(), PROVIDER)
    busy = unmet_requirements(spec(resources={"cpu": 3}), offer(), PROVIDER)
    assert too_big == ["cpu: needs 8, node has 4"]
    assert busy == ["cpu: needs 3, 2 free now"]


def test_each_constraint_gives_its_own_reason() -> None:
    job = spec(
        constraints={
            "regions": ["us-east"],
            "architectures": ["aarch64"],
            "max_price_per_cpu_hour": 0.05,
            "providers": [OTHER],
        }
    )
    reasons = unmet_requirements(job, offer(), PROVIDER)
    assert len(reasons) == 4
    assert any(r.startswith("region: eu-west not in us-east") for r in reasons)
    assert any(r.startswith("architecture: x86_64") for r in reasons)
    assert any(r.startswith("price: 0.1/cpu-hour above max 0.05") for r in reasons)
    assert any(r.startswith("provider:") for r in reasons)


def test_executor_and_gpu_requirements() -> None:
    no_exec = unmet_requirements(spec(), offer(executors=[]), PROVIDER)
    assert no_exec == ["executor: process not offered (offers none)"]
    gpu_job = spec(resources={"gpu_count": 1, "gpu_model": "A100", "vram_mb": 40_000})
    gpu_offer = offer(
        hardware=Hardware(
            cpu_count=4,
            architecture="x86_64",
            memory_mb=8192,
            disk_mb=10_000,
            gpus=[GpuInfo(model="NVIDIA T4", vram_mb=16_000)],
        ),
        free=Capacity(cpu=2, memory_mb=4096, disk_mb=10_000, gpu_count=1),
    )
    reasons = unmet_requirements(gpu_job, gpu_offer, PROVIDER)
    assert reasons == ["gpu model/vram: needs 1 x A100 with 40000 MB, 0 match"]


def test_max_charge_bills_cpu_hours() -> None:
    rates = Rates(price_per_cpu_hour=0.5)
    assert max_charge(spec(resources={"cpu": 2}, timeout_s=1800), rates) == 0.5


def test_ranking_is_cheapest_first_and_deterministic() -> None:
    def bid(price: float) -> Bid:
        return Bid(
            request_id="a" * 32,
            job_id="b" * 32,
            price_per_cpu_hour=price,
            max_charge=0.0,
            advertisement=offer(price_per_cpu_hour=price),
        )

    bids = [(OTHER, bid(0.2)), (PROVIDER, bid(0.1)), ("did:key:zA", bid(0.1))]
    ranked = [did for did, _ in rank_bids(spec(), bids)]
    assert ranked == [PROVIDER, "did:key:zA", OTHER]
    assert ranked == [did for did, _ in rank_bids(spec(), list(reversed(bids)))]
