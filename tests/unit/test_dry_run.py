"""Dry-run matching over advertisements: ranked candidates and an explanation."""

from __future__ import annotations

from computemesh.models.job import JobSpec
from computemesh.models.market import Advertisement, Capacity, Hardware
from computemesh.orchestrator.dry_run import dry_run

CHEAP = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
DEAR = "did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf"


def advert(region: str, price: float) -> Advertisement:
    return Advertisement(
        hardware=Hardware(cpu_count=4, architecture="x86_64", memory_mb=8192, disk_mb=10_000),
        region=region,
        executors=["process"],
        price_per_cpu_hour=price,
        sandboxed=True,
        free=Capacity(cpu=4, memory_mb=6000, disk_mb=10_000, gpu_count=0),
        version="0.1.0",
    )


ADVERTS = {CHEAP: advert("eu-west", 0.1), DEAR: advert("us-east", 0.5)}


def test_ranks_fitting_nodes_with_breakdowns() -> None:
    report = dry_run(JobSpec(name="t", command=["true"]), ADVERTS, limit=5)
    assert report["nodes"] == 2
    assert [c["provider"] for c in report["candidates"]] == [CHEAP, DEAR]
    assert all("qualities" in c for c in report["candidates"])
    assert report["explanation"]["placeable"] is True


def test_explains_a_job_nothing_fits() -> None:
    spec = JobSpec.model_validate(
        {"name": "t", "command": ["true"], "constraints": {"regions": ["ap-south"]}}
    )
    report = dry_run(spec, ADVERTS, limit=5)
    assert report["candidates"] == []
    explanation = report["explanation"]
    assert explanation["placeable"] is False
    removed = {c["name"]: c["alone"] for c in explanation["constraints"]}
    assert max(removed.values()) == 2
    assert "cannot be placed" in report["text"]
