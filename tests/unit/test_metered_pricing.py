"""Every metered quantity priced at the contract's rates: fuel, CPU, output, memory-time.

Also: the cap those rates put on a spec, rates refused where they enter (contracts, bids,
adverts, node settings), contracts signed before the new rates, fuel a result cannot have
used, and the consumer's maxima on each rate.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from computemesh.identity import Identity
from computemesh.matching import NodeIndex, match_job, max_charge, unmet_requirements
from computemesh.matching.price import underpriced_terms
from computemesh.models.job import FUEL_PER_CPU_SECOND, JobSpec
from computemesh.models.market import (
    MAX_RATE,
    Advertisement,
    ContractTerms,
    JobResult,
    Rates,
    ResultStatus,
)
from computemesh.models.market import ResourceUsage as Usage
from computemesh.node.settings import NodeSettings
from computemesh.protocol.results import fuel_problem
from computemesh.settlement import credits_to_units
from computemesh.settlement.pricing import charge_for_usage

CONSUMER, PROVIDER = Identity.generate(), Identity.generate()
RATES = Rates(
    price_per_cpu_hour=0.36,
    price_per_billion_fuel=2.0,
    price_per_gb_out=0.5,
    price_per_gb_hour=0.9,
)


def terms(rates: Rates = RATES, cap: float = 1000.0, **changes: object) -> ContractTerms:
    data = {
        "contract_id": "a" * 32,
        "job_id": "b" * 32,
        "consumer": CONSUMER.did,
        "provider": PROVIDER.did,
        "spec_sha256": "c" * 64,
        **rates.model_dump(),
        "max_charge": cap,
        "created_at_ms": 0,
        **changes,
    }
    return ContractTerms.model_validate(data)


def usage(**changes: Any) -> Usage:
    return Usage.model_validate({"wall_s": 1.0, "cpu_s": 1.0, "max_rss_kb": 0, **changes})


def wasm_spec(**changes: Any) -> JobSpec:
    data = {"name": "w", "executor": "wasm", "command": ["m.wat"], "timeout_s": 60, **changes}
    return JobSpec.model_validate(data)


# The pricing function --------------------------------------------------------------------


def test_wasm_replicas_with_the_same_fuel_cost_the_same_whatever_their_cpu_time() -> None:
    fast = usage(fuel=3_000_000_000, cpu_s=0.4, wall_s=0.5)
    slow = usage(fuel=3_000_000_000, cpu_s=2.7, wall_s=3.1)
    assert charge_for_usage(fast, terms()) == charge_for_usage(slow, terms()) == 6_000_000


def test_without_fuel_cpu_time_is_priced_per_hour() -> None:
    assert charge_for_usage(usage(cpu_s=10.0), terms()) == 1000  # 0.36 / 3600 x 10 credits
    assert charge_for_usage(usage(cpu_s=10.0, fuel=0), terms()) == 0


def test_output_bytes_are_charged_per_gb() -> None:
    base = charge_for_usage(usage(fuel=0), terms())
    assert charge_for_usage(usage(fuel=0, bytes_out=2_000_000), terms()) - base == 1000


def test_peak_memory_is_charged_per_gb_hour_of_wall_time() -> None:
    # 1,000,000 KiB = 1.024 GB held 3600 s at 0.9 per GB-hour
    held = usage(fuel=0, max_rss_kb=1_000_000, wall_s=3600.0)
    assert charge_for_usage(held, terms()) == 921_600


def test_the_parts_add_up() -> None:
    everything = usage(fuel=1_000_000_000, bytes_out=2_000_000, max_rss_kb=1_000_000, wall_s=1.0)
    assert charge_for_usage(everything, terms()) == 2_000_000 + 1000 + 256


def test_the_charge_is_capped_at_the_escrow() -> None:
    assert charge_for_usage(usage(fuel=10**12), terms(cap=0.25)) == 250_000


def test_a_contract_signed_before_the_new_rates_prices_as_it_did() -> None:
    stored = terms().model_dump(mode="json")
    for name in ("price_per_billion_fuel", "price_per_gb_out", "price_per_gb_hour"):
        del stored[name]
    old = ContractTerms.model_validate(stored)
    assert old.rates == Rates(price_per_cpu_hour=0.36)
    assert charge_for_usage(usage(cpu_s=10.0, bytes_out=10**9), old) == 1000


@given(
    fuel=st.one_of(st.none(), st.integers(min_value=0, max_value=10**18)),
    cpu_s=st.floats(min_value=0, max_value=10**7),
    wall_s=st.floats(min_value=0, max_value=10**7),
    rss=st.integers(min_value=0, max_value=2**40),
    out=st.integers(min_value=0, max_value=2**50),
    cap=st.floats(min_value=0, max_value=10**6),
    rate=st.floats(min_value=0, max_value=MAX_RATE),
)
def test_a_charge_never_exceeds_the_escrow(
    fuel: int | None, cpu_s: float, wall_s: float, rss: int, out: int, cap: float, rate: float
) -> None:
    rates = Rates(
        price_per_cpu_hour=rate,
        price_per_billion_fuel=rate,
        price_per_gb_out=rate,
        price_per_gb_hour=rate,
    )
    metered = usage(fuel=fuel, cpu_s=cpu_s, wall_s=wall_s, max_rss_kb=rss, bytes_out=out)
    assert 0 <= charge_for_usage(metered, terms(rates, cap=cap)) <= credits_to_units(cap)


# Bad rates and usage ----------------------------------------------------------------------

BAD_RATES = [-0.01, math.inf, -math.inf, math.nan, MAX_RATE * 2]
RATE_NAMES = ["price_per_cpu_hour", "price_per_billion_fuel", "price_per_gb_out"]


@pytest.mark.parametrize("bad", BAD_RATES)
@pytest.mark.parametrize("name", [*RATE_NAMES, "price_per_gb_hour"])
def test_bad_rates_are_refused_in_contracts_and_node_settings(name: str, bad: float) -> None:
    with pytest.raises(ValidationError, match=name):
        terms(RATES, 1000.0, **{name: bad})
    with pytest.raises(ValidationError, match=name):
        NodeSettings.model_validate({"home": "/tmp/node", name: bad})


@pytest.mark.parametrize("bad", [math.inf, math.nan, -1.0])
def test_an_advert_with_a_bad_rate_does_not_parse(bad: float) -> None:
    advert = {
        "hardware": {"cpu_count": 2, "architecture": "x86_64", "memory_mb": 1024, "disk_mb": 1},
        "region": "eu-west",
        "executors": ["wasm"],
        "price_per_cpu_hour": 0.1,
        "price_per_gb_out": bad,
        "sandboxed": True,
        "free": {"cpu": 2, "memory_mb": 1024, "disk_mb": 1, "gpu_count": 0},
        "version": "0",
    }
    with pytest.raises(ValidationError, match="price_per_gb_out"):
        Advertisement.model_validate(advert)


@pytest.mark.parametrize("field", ["cpu_s", "wall_s"])
def test_usage_that_is_not_finite_is_refused(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        usage(**{field: math.inf})


def test_a_node_prices_fuel_like_its_cpu_unless_told() -> None:
    settings = NodeSettings.model_validate({"home": "/tmp/node", "price_per_cpu_hour": 0.18})
    per_cpu_hour = settings.rates().price_per_billion_fuel * FUEL_PER_CPU_SECOND * 3600 / 1e9
    assert per_cpu_hour == pytest.approx(0.18)
    told = NodeSettings.model_validate({"home": "/tmp/node", "price_per_billion_fuel": 0.0})
    assert told.rates().price_per_billion_fuel == 0.0


# The cap ----------------------------------------------------------------------------------


def test_the_cap_covers_a_wasm_job_that_burns_its_whole_fuel_budget() -> None:
    spec = wasm_spec(fuel=4_000_000_000, resources={"cpu": 1, "memory_mb": 64, "disk_mb": 1})
    cap = max_charge(spec, RATES)
    burnt = usage(fuel=spec.fuel, bytes_out=2**20, max_rss_kb=64 * 1024, wall_s=60.0)
    assert charge_for_usage(burnt, terms(cap=cap)) == credits_to_units(cap)
    assert cap == pytest.approx(8.0 + 0.5 * 2**20 / 1e9 + 0.9 * 64 * 2**20 / 1e9 / 60)


def test_a_wasm_cap_without_a_declared_budget_follows_the_cpu_time_limit() -> None:
    spec = wasm_spec(resources={"cpu": 1})
    assert spec.fuel_limit() == 60 * FUEL_PER_CPU_SECOND
    fuel_only = Rates(price_per_cpu_hour=0.0, price_per_billion_fuel=1.0)
    assert max_charge(spec, fuel_only) == pytest.approx(300.0)


def test_a_provider_refuses_terms_below_its_rates_or_cap() -> None:
    spec = wasm_spec()
    fair = terms(cap=max_charge(spec, RATES))
    assert underpriced_terms(fair, spec, RATES) == []
    cheap = terms(price_per_billion_fuel=1.0, cap=max_charge(spec, RATES))
    assert underpriced_terms(cheap, spec, RATES) == [
        "price_per_billion_fuel 1 is below this node's 2"
    ]
    (short,) = underpriced_terms(terms(cap=0.001), spec, RATES)
    assert short.startswith("max_charge 0.001 is below")


# Fuel a result cannot have used -----------------------------------------------------------


def result(
    status: ResultStatus = "completed", exit_code: int | None = 0, **metered: Any
) -> JobResult:
    return JobResult(
        contract_id="a" * 32,
        job_id="b" * 32,
        provider=PROVIDER.did,
        status=status,
        exit_code=exit_code,
        stdout="",
        stderr="",
        usage=usage(**metered),
        finished_at_ms=0,
    )


def test_fuel_that_does_not_fit_the_job_is_refused() -> None:
    spec = wasm_spec(fuel=1000)
    process = JobSpec.model_validate({"name": "p", "command": ["true"]})
    assert fuel_problem(result(fuel=1000), spec) is None
    assert fuel_problem(result("killed", None), spec) is None
    assert fuel_problem(result(), spec) == "a wasm result that ran to its end reports no fuel"
    assert fuel_problem(result(fuel=1001), spec) == (
        "reports 1001 fuel, more than the job's budget of 1000"
    )
    assert fuel_problem(result(fuel=5), process) == "a process job reports wasm fuel"
    assert fuel_problem(result(), process) is None


# The consumer's maxima --------------------------------------------------------------------


def offer(**rates: float) -> Advertisement:
    return Advertisement.model_validate(
        {
            "hardware": {
                "cpu_count": 2,
                "architecture": "x86_64",
                "memory_mb": 1024,
                "disk_mb": 1024,
            },
            "region": "eu-west",
            "executors": ["wasm"],
            "price_per_cpu_hour": 0.1,
            **rates,
            "sandboxed": True,
            "free": {"cpu": 2, "memory_mb": 1024, "disk_mb": 1024, "gpu_count": 0},
            "version": "0",
        }
    )


def test_a_consumer_caps_each_rate_and_hears_which_one_is_above() -> None:
    spec = wasm_spec(constraints={"max_price_per_billion_fuel": 0.01, "max_price_per_gb_out": 0.05})
    cheap, dear = Identity.generate().did, Identity.generate().did
    index = NodeIndex()
    index.upsert(cheap, offer(price_per_billion_fuel=0.01, price_per_gb_out=0.05), seen_at=0.0)
    index.upsert(dear, offer(price_per_billion_fuel=0.02, price_per_gb_out=0.1), seen_at=0.0)
    assert [candidate.provider for candidate in match_job(index, spec)] == [cheap]
    assert unmet_requirements(spec, index.advertisement(cheap), cheap) == []
    assert unmet_requirements(spec, index.advertisement(dear), dear) == [
        "price: 0.02/billion fuel above max 0.01; 0.1/GB out above max 0.05"
    ]
