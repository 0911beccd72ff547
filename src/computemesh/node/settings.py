"""A provider node's settings, validated once at start and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from computemesh.models.job import FUEL_PER_CPU_SECOND, PACKAGE_NAME_PATTERN, REGION_PATTERN
from computemesh.models.market import FUEL_PER_BILLION, SECONDS_PER_HOUR, Rate, Rates
from computemesh.node.faults import parse_fault
from computemesh.node.latency import ProbeSettings

FUEL_PER_CPU_HOUR = FUEL_PER_CPU_SECOND * SECONDS_PER_HOUR


class NodeSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path
    region: str = Field(default="local", pattern=REGION_PATTERN)
    price_per_cpu_hour: Rate = 0.10
    price_per_billion_fuel: Rate | None = Field(
        default=None,
        description="Wasm jobs are priced by fuel; default: the CPU rate spread over the "
        "fuel budget of a CPU-second (FUEL_PER_CPU_SECOND).",
    )
    price_per_gb_out: Rate = Field(default=0.01, description="Per 10^9 bytes of output.")
    price_per_gb_hour: Rate = Field(
        default=0.0, description="Per 10^9 bytes of peak memory for an hour; 0: in the CPU rate."
    )
    sandbox: bool = True
    allow_network: bool = Field(
        default=False, description="Give network access to jobs that declare they need it."
    )
    process_python_packages: tuple[Annotated[str, Field(pattern=PACKAGE_NAME_PATTERN)], ...] = (
        Field(
            default=("numpy",),
            max_length=32,
            description="Python packages (with what they require) offered to process jobs "
            "that declare a runtime; empty: no runtime.",
        )
    )
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    advertise_interval_s: float = Field(default=30.0, gt=0)
    max_inline_output_bytes: int = Field(default=256 * 1024, ge=0)
    max_output_bytes: int = Field(default=64 * 1024, ge=0, description="stdout/stderr cap each")
    max_processes: int = Field(default=64, ge=1)
    memory_fraction: float = Field(default=0.8, gt=0, le=1)
    fault: str | None = Field(
        default=None, description="Misbehave on purpose (tests only): see node/faults.py."
    )
    latency_probe_interval_s: float = Field(default=10.0, gt=0, description="See node/latency.py.")
    latency_peers_per_round: int = Field(
        default=3, ge=0, le=64, description="Peers pinged each round; 0 measures nothing."
    )
    latency_samples: int = Field(default=3, ge=1, le=32, description="Round trips kept per peer.")
    latency_max_peers: int = Field(default=64, ge=1, le=1024, description="Peers tracked.")

    @field_validator("fault")
    @classmethod
    def _known_fault(cls, value: str | None) -> str | None:
        if value is not None:
            parse_fault(value)
        return value

    def rates(self) -> Rates:
        """The rates this node advertises, bids and signs contracts at."""
        fuel = self.price_per_billion_fuel
        if fuel is None:
            fuel = round(self.price_per_cpu_hour * FUEL_PER_BILLION / FUEL_PER_CPU_HOUR, 12)
        return Rates(
            price_per_cpu_hour=self.price_per_cpu_hour,
            price_per_billion_fuel=fuel,
            price_per_gb_out=self.price_per_gb_out,
            price_per_gb_hour=self.price_per_gb_hour,
        )

    def probe_settings(self) -> ProbeSettings:
        return ProbeSettings(
            interval_s=self.latency_probe_interval_s,
            peers_per_round=self.latency_peers_per_round,
            samples=self.latency_samples,
            max_peers=self.latency_max_peers,
            peer_ttl_s=4 * self.advertise_interval_s,
        )

    @property
    def work_root(self) -> Path:
        return self.home / "work"

    @property
    def database_path(self) -> Path:
        return self.home / "node.db"
