"""The constraint and ensemble models: contradictions are refused with the fields named."""

from __future__ import annotations

from typing import Any

import pytest

from computemesh.matching import unmet_requirements
from computemesh.models.ensemble import EnsembleSpec
from computemesh.models.errors import SpecError
from computemesh.models.job import JobSpec
from computemesh.models.market import Advertisement
from computemesh.models.validation import job_spec_schema, parse_job_spec, parse_model
from tests.unit.test_matching_fleets import DIDS

A, B = DIDS[:2]
VALID = {"name": "hello", "command": ["echo", "hi"]}


def problems(data: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as caught:
        parse_job_spec({**VALID, **data})
    return caught.value.message


@pytest.mark.parametrize(
    ("constraints", "named"),
    [
        (
            {"regions": ["eu-west", "us-east"], "exclude_regions": ["eu-west"]},
            "regions and exclude_regions both list eu-west",
        ),
        (
            {"countries": ["DE"], "exclude_countries": ["DE", "FR"]},
            "countries and exclude_countries both list DE",
        ),
        (
            {"cities": ["Berlin"], "exclude_cities": ["berlin"]},
            "cities and exclude_cities both list berlin",
        ),
        (
            {"providers": [A], "exclude_providers": [A]},
            f"providers and exclude_providers both list {A}",
        ),
        (
            {"pinned_node": A, "exclude_providers": [A]},
            "pinned_node is listed in exclude_providers",
        ),
        ({"pinned_node": A, "providers": [B]}, "pinned_node is not among providers"),
    ],
)
def test_contradictory_constraints_are_refused_naming_the_fields(
    constraints: dict[str, Any], named: str
) -> None:
    message = problems({"constraints": constraints})
    assert "constraints" in message
    assert named in message


def test_every_contradiction_is_listed_at_once() -> None:
    message = problems(
        {
            "constraints": {
                "regions": ["eu-west"],
                "exclude_regions": ["eu-west"],
                "providers": [A],
                "exclude_providers": [A],
            }
        }
    )
    assert "regions and exclude_regions" in message
    assert "providers and exclude_providers" in message


@pytest.mark.parametrize(
    ("resources", "named"),
    [
        (
            {"gpu_count": 1, "min_compute_capability": "9.0", "max_compute_capability": "8.6"},
            "min_compute_capability 9.0 is above max_compute_capability 8.6",
        ),
        ({"gpu_vendor": "nvidia"}, "gpu_vendor: need gpu_count of at least 1"),
        (
            {"min_compute_capability": "8.0", "vram_mb": 10},
            "vram_mb, min_compute_capability: need gpu_count",
        ),
        ({"gpu_count": 1, "min_compute_capability": "eight"}, "resources.min_compute_capability"),
    ],
)
def test_resource_contradictions_are_refused(resources: dict[str, Any], named: str) -> None:
    assert named in problems({"resources": resources})


@pytest.mark.parametrize(
    ("constraints", "field"),
    [
        ({"countries": ["Germany"]}, "constraints.countries.0"),
        ({"min_reputation": 1.5}, "constraints.min_reputation"),
        ({"pinned_node": "node-1"}, "constraints.pinned_node"),
        ({"organisations": ["bad name"]}, "constraints.organisations.0"),
        ({"preferences": {"price": -1}}, "constraints.preferences.price"),
        ({"preferences": {"speed": 1}}, "constraints.preferences.speed"),
    ],
)
def test_malformed_constraints_name_their_field(constraints: dict[str, Any], field: str) -> None:
    assert field in problems({"constraints": constraints})


def test_old_constraint_fields_keep_working_and_new_ones_default_empty() -> None:
    spec = parse_job_spec(
        {**VALID, "constraints": {"regions": ["eu-west"], "max_price_per_cpu_hour": 0.2}}
    )
    rules = spec.constraints
    assert rules.regions == ["eu-west"] and rules.max_price_per_cpu_hour == 0.2
    assert rules.exclude_regions == [] and rules.pinned_node is None
    assert rules.preferences.price == 1.0 and rules.preferences.near is None


def test_schema_publishes_constraints_preferences_and_gpu_details() -> None:
    definitions = job_spec_schema()["$defs"]
    constraints = definitions["Constraints"]["properties"]
    assert {
        "exclude_regions",
        "countries",
        "exclude_countries",
        "cities",
        "exclude_cities",
        "exclude_providers",
        "organisations",
        "min_reputation",
        "pinned_node",
        "preferences",
    } <= set(constraints)
    assert {"price", "latency", "reputation", "load", "success_rate", "near"} <= set(
        definitions["Preferences"]["properties"]
    )
    assert {"gpu_vendor", "min_compute_capability", "max_compute_capability"} <= set(
        definitions["Resources"]["properties"]
    )


def offer(**changes: Any) -> Advertisement:
    data: dict[str, Any] = {
        "hardware": {
            "cpu_count": 8,
            "architecture": "x86_64",
            "memory_mb": 16_384,
            "disk_mb": 100_000,
            "gpus": [{"model": "NVIDIA A100", "vram_mb": 40_960, "compute_capability": "8.0"}],
        },
        "region": "eu-west",
        "executors": ["process"],
        "price_per_cpu_hour": 0.1,
        "sandboxed": True,
        "free": {"cpu": 8, "memory_mb": 16_384, "disk_mb": 100_000, "gpu_count": 1},
        "version": "0.1.0",
        "country": "IE",
        "city": "Dublin",
        "organisations": ["acme"],
        "reputation": 0.6,
    }
    return Advertisement.model_validate(data | changes)


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        ({"constraints": {"exclude_regions": ["eu-west"]}}, "region: eu-west is excluded"),
        ({"constraints": {"countries": ["DE", "FR"]}}, "country: IE not in DE, FR"),
        ({"constraints": {"exclude_cities": ["DUBLIN"]}}, "city: Dublin is excluded"),
        (
            {"constraints": {"exclude_providers": [A]}},
            "provider: in the job's excluded provider list",
        ),
        ({"constraints": {"organisations": ["beta"]}}, "organisation: not a member of beta"),
        ({"constraints": {"min_reputation": 0.8}}, "reputation: 0.6 below min 0.8"),
        ({"constraints": {"pinned_node": B}}, f"pinned: the job runs only on {B}"),
        (
            {"resources": {"gpu_count": 1, "min_compute_capability": "8.6"}},
            "gpu model/vram: needs 1 x any with 0 MB, compute capability >= 8.6, 0 match",
        ),
        (
            {"resources": {"gpu_count": 1, "gpu_vendor": "amd"}},
            "gpu model/vram: needs 1 x amd any with 0 MB, 0 match",
        ),
        ({"resources": {"disk_mb": 200_000}}, "disk: needs 200000 MB, node has 100000 MB"),
    ],
)
def test_each_new_constraint_gives_its_own_reason(job: dict[str, Any], reason: str) -> None:
    spec = JobSpec.model_validate({**VALID, **job})
    assert unmet_requirements(spec, offer(), A) == [reason]


def test_case_and_unknown_location_semantics() -> None:
    dublin = JobSpec.model_validate({**VALID, "constraints": {"cities": ["dublin"]}})
    assert unmet_requirements(dublin, offer(), A) == []
    assert unmet_requirements(dublin, offer(city=None), A) == ["city: unknown not in dublin"]
    no_us = JobSpec.model_validate({**VALID, "constraints": {"exclude_countries": ["US"]}})
    assert unmet_requirements(no_us, offer(country=None), A) == []
    trusted = JobSpec.model_validate({**VALID, "constraints": {"min_reputation": 0.1}})
    assert unmet_requirements(trusted, offer(reputation=None), A) == [
        "reputation: unknown, needs at least 0.1"
    ]


def ensemble(**changes: Any) -> dict[str, Any]:
    parts = [{"name": name, "command": ["run"]} for name in ("db", "api", "web")]
    return {"name": "shop", "allocations": parts, **changes}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (
            {"latency": [{"a": "db", "b": "cache", "max_rtt_ms": 5}]},
            "latency: unknown allocations cache",
        ),
        ({"latency": [{"a": "db", "b": "db", "max_rtt_ms": 5}]}, "a and b are both 'db'"),
        ({"spread": [["db", "db"]]}, "spread: db, db names an allocation twice"),
        ({"same_region": [["db", "nope"]]}, "same_region: unknown allocations nope"),
        (
            {
                "allocations": [
                    {"name": "db", "command": ["run"], "constraints": {"pinned_node": A}},
                    {"name": "api", "command": ["run"], "constraints": {"pinned_node": A}},
                ],
                "spread": [["db", "api"]],
            },
            f"spread: db, api pins two allocations to {A}",
        ),
        (
            {
                "allocations": [
                    {"name": "db", "command": ["run"], "constraints": {"regions": ["eu-west"]}},
                    {"name": "api", "command": ["run"], "constraints": {"regions": ["us-east"]}},
                ],
                "same_region": [["db", "api"]],
            },
            "same_region: db, api accept no region in common",
        ),
        (
            {"allocations": [{"name": "db", "command": ["run"]}, {"name": "db", "command": ["x"]}]},
            "allocations: names repeat: db",
        ),
        (
            {"allocations": [{"name": "db", "command": ["run"], "replicas": 2}]},
            "allocations.db: replicas must be 1",
        ),
    ],
)
def test_inconsistent_ensembles_are_refused(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_model(EnsembleSpec, ensemble(**changes), what="ensemble")
    assert named in caught.value.message


def test_a_consistent_ensemble_validates() -> None:
    spec = parse_model(
        EnsembleSpec,
        ensemble(
            latency=[{"a": "db", "b": "api", "max_rtt_ms": 10}],
            same_region=[["db", "api"]],
            spread=[["api", "web"]],
        ),
        what="ensemble",
    )
    assert spec.allocation("api").name == "api"
    assert EnsembleSpec.model_json_schema()["properties"]["latency"]["type"] == "array"
