"""What providers and consumers exchange: advertisements, bids, contracts and results.

Each of these travels as the payload of a signed envelope; contracts and results are also
signed as documents of their own (``identity.documents``) so they can be stored and checked
long after the envelope that carried them expired.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from computemesh.models.job import (
    City,
    ComputeCapability,
    Country,
    Did,
    JobSpec,
    Organisation,
    Region,
)

HEX64 = r"^[0-9a-f]{64}$"
ID_PATTERN = r"^[0-9a-f]{32}$"
MAX_ASKED = 256
MAX_RATE = 1_000_000.0
"""The highest rate, in credits per unit, any price may name."""

Rate = Annotated[float, Field(ge=0, le=MAX_RATE, allow_inf_nan=False)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rates(_Wire):
    """What a provider charges per metered quantity, in credits (``settlement.pricing``).

    Advertisements, bids and contract terms extend this model, so the rates travel flat
    beside their other fields. The rates added after ``price_per_cpu_hour`` default to 0,
    so contracts stored before them still read (and price) as they were signed.
    """

    price_per_cpu_hour: Rate
    price_per_billion_fuel: Rate = Field(
        default=0.0, description="Per 10^9 units of wasm fuel: wasm jobs are priced by fuel."
    )
    price_per_gb_out: Rate = Field(
        default=0.0, description="Per 10^9 bytes of output (stdout, stderr, files, checkpoints)."
    )
    price_per_gb_hour: Rate = Field(
        default=0.0, description="Per 10^9 bytes of peak memory held for an hour of wall time."
    )

    @property
    def rates(self) -> Rates:
        """The rates alone, without the fields of the model that carries them."""
        return Rates.model_validate({name: getattr(self, name) for name in RATE_FIELDS})


RATE_FIELDS = tuple(Rates.model_fields)
RATE_UNITS = {
    "price_per_cpu_hour": "cpu-hour",
    "price_per_billion_fuel": "billion fuel",
    "price_per_gb_out": "GB out",
    "price_per_gb_hour": "GB-hour",
}
"""What each rate is per, for messages."""
SECONDS_PER_HOUR = 3600
FUEL_PER_BILLION = 10**9
BYTES_PER_GB = 10**9


class GpuInfo(_Wire):
    model: str = Field(max_length=128)
    vram_mb: int = Field(ge=0)
    vendor: str = Field(default="nvidia", max_length=32)
    compute_capability: ComputeCapability | None = Field(
        default=None, description='CUDA compute capability, "8.0" style; none if unknown.'
    )


class Hardware(_Wire):
    """What a node has, as detected at start."""

    cpu_count: int = Field(ge=1, le=4096)
    architecture: str = Field(max_length=32)
    memory_mb: int = Field(ge=1)
    disk_mb: int = Field(ge=0)
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=64)
    cgroups: Literal["v1", "v2", "none"] = Field(
        default="none", description="cgroup version jobs are limited with; none: rlimits only."
    )


class Capacity(_Wire):
    """Resources not yet promised to a running allocation."""

    cpu: float = Field(ge=0)
    memory_mb: int = Field(ge=0)
    disk_mb: int = Field(ge=0)
    gpu_count: int = Field(ge=0)


class Advertisement(Rates):
    """A provider's signed statement of what it offers; the sender DID is the provider."""

    hardware: Hardware
    region: Region
    executors: list[str] = Field(max_length=16)
    sandboxed: bool
    free: Capacity
    version: str = Field(max_length=32)
    country: Country | None = None
    city: City | None = None
    organisations: list[Organisation] = Field(default_factory=list, max_length=16)
    reputation: float | None = Field(default=None, ge=0, le=1)
    latency_ms: dict[Region, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        max_length=64,
        description="Measured round trip from this node to each region, in ms.",
    )
    runtimes: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list,
        max_length=64,
        description='Runtimes jobs can use: "python3.11", "python3.11/numpy==2.4.6".',
    )
    network: bool = Field(
        default=False, description="Jobs that declare network get network access here."
    )


class Heartbeat(_Wire):
    seq: int = Field(ge=0)
    free: Capacity
    running: int = Field(ge=0)


class BidRequest(_Wire):
    """Who can run this job, and for how much? Sent to chosen candidates, or broadcast."""

    request_id: str = Field(pattern=ID_PATTERN)
    job_id: str = Field(pattern=ID_PATTERN)
    spec: JobSpec
    asked: list[Did] = Field(
        default_factory=list,
        max_length=MAX_ASKED,
        description="Nodes asked directly: they ignore the same request seen by broadcast.",
    )


class Bid(Rates):
    """A provider's offer to run a job at its advertised rates."""

    request_id: str = Field(pattern=ID_PATTERN)
    job_id: str = Field(pattern=ID_PATTERN)
    max_charge: float = Field(
        ge=0, description="The most this job costs at these rates (matching.max_charge)."
    )
    advertisement: Advertisement


class BidRefusal(_Wire):
    """A node's reason for not bidding, sent so the consumer can explain a "no"."""

    request_id: str = Field(pattern=ID_PATTERN)
    job_id: str = Field(pattern=ID_PATTERN)
    reasons: list[str] = Field(max_length=32)


class ContractTerms(Rates):
    """The agreement both sides sign: this provider runs this spec at these rates."""

    contract_id: str = Field(pattern=ID_PATTERN)
    job_id: str = Field(pattern=ID_PATTERN)
    consumer: Did
    provider: Did
    spec_sha256: str = Field(pattern=HEX64)
    max_charge: float = Field(ge=0, allow_inf_nan=False)
    created_at_ms: int = Field(ge=0)
    resume_from: str | None = Field(
        default=None, pattern=HEX64, description="sha256 of the checkpoint the job resumes from."
    )


class ResourceUsage(_Wire):
    """What one run used, as its provider metered it: what it is priced by."""

    wall_s: float = Field(ge=0, allow_inf_nan=False)
    cpu_s: float = Field(ge=0, allow_inf_nan=False)
    max_rss_kb: int = Field(ge=0)
    fuel: int | None = Field(default=None, ge=0, description="WASM fuel consumed, if metered.")
    bytes_out: int = Field(
        default=0, ge=0, description="stdout, stderr, output files and checkpoints, in bytes."
    )


class OutputFile(_Wire):
    path: str = Field(max_length=255)
    sha256: str = Field(pattern=HEX64)
    size: int = Field(ge=0)
    content_b64: str | None = Field(
        default=None, description="The bytes, when small enough to travel with the result."
    )


ResultStatus = Literal["completed", "failed", "timeout", "killed", "rejected"]


class JobResult(_Wire):
    """What a provider signs after running an allocation."""

    contract_id: str = Field(pattern=ID_PATTERN)
    job_id: str = Field(pattern=ID_PATTERN)
    provider: Did
    status: ResultStatus
    reason: str = Field(default="", max_length=2048)
    exit_code: int | None
    stdout: str = Field(max_length=1024 * 1024)
    stderr: str = Field(max_length=1024 * 1024)
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    outputs: list[OutputFile] = Field(default_factory=list, max_length=256)
    usage: ResourceUsage
    finished_at_ms: int = Field(ge=0)


class Checkpoint(_Wire):
    """What a provider signs for one snapshot of a job's checkpoint directory.

    ``sha256`` and ``size`` describe the archive (a deterministic tar); ``seq`` grows with
    each snapshot of one contract; ``usage`` is what this contract's run had used when the
    snapshot was taken (what the checkpoint is priced by once it proves to be verified
    progress: ``settlement.pricing``).
    """

    contract_id: str = Field(pattern=ID_PATTERN)
    job_id: str = Field(pattern=ID_PATTERN)
    provider: Did
    seq: int = Field(ge=0)
    sha256: str = Field(pattern=HEX64)
    size: int = Field(ge=0)
    created_at_ms: int = Field(ge=0)
    usage: ResourceUsage


LogStream = Literal["stdout", "stderr"]


class LogChunk(_Wire):
    """Output a running job wrote, pushed while it runs; ``seq`` counts per contract.

    ``dropped`` counts bytes the node left out before this chunk (rate or size bound).
    """

    contract_id: str = Field(pattern=ID_PATTERN)
    job_id: str = Field(pattern=ID_PATTERN)
    seq: int = Field(ge=0)
    stream: LogStream
    data: str = Field(max_length=64 * 1024)
    dropped: int = Field(default=0, ge=0)
