"""The job spec: what a consumer asks the network to run, by requirement rather than machine."""

from __future__ import annotations

import base64
import hashlib
import math
import posixpath
import re
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_INLINE_INPUT_BYTES = 512 * 1024
"""Inputs travel inside signed envelopes (1 MiB by default), so each is bounded."""

FUEL_PER_CPU_SECOND = 5_000_000_000
"""The default fuel budget of a wasm job per second of its CPU-time limit.

Measured on the reference machine (2-core x86_64 VM): simple integer loops burn 2.8 to
4.7 billion fuel per second of CPU. Rounded up, so that a job runs out of CPU time (wall
time, for wasm) rather than fuel when it asks for none; fuel is the same on every host.
"""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
DID_PATTERN = r"^did:key:z[1-9A-HJ-NP-Za-km-z]+$"
REGION_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV_PREFIX = "CMESH_"

Did = Annotated[str, Field(pattern=DID_PATTERN, max_length=128)]
Region = Annotated[str, Field(pattern=REGION_PATTERN)]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_relative_path(path: str) -> str:
    """A path inside the job's work directory: relative, normalised, no escape."""
    if not path or len(path) > 255:
        raise ValueError("must be 1 to 255 characters")
    if path.startswith("/") or "\\" in path or "\x00" in path:
        raise ValueError("must be a relative POSIX path")
    normal = posixpath.normpath(path)
    if normal != path or normal == "." or normal.startswith(".."):
        raise ValueError("must be normalised and stay inside the work directory")
    return path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputFile(_Strict):
    """One input placed in the work directory before the job starts.

    Give exactly one of ``content`` (UTF-8 text), ``content_b64`` (bytes) or ``source``
    (a local file the consumer reads when it submits). ``sha256``, when given, must match;
    it is filled in when the spec is resolved, so providers receive content-addressed inputs.
    """

    path: str = Field(description="Relative path inside the job's work directory.")
    content: str | None = Field(default=None, description="Inline UTF-8 text.")
    content_b64: str | None = Field(default=None, description="Inline bytes, base64.")
    source: str | None = Field(default=None, description="A local file read at submit time.")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    executable: bool = False

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        return check_relative_path(value)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [v for v in (self.content, self.content_b64, self.source) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of content, content_b64 or source")
        if self.content_b64 is not None:
            try:
                base64.b64decode(self.content_b64, validate=True)
            except ValueError as exc:
                raise ValueError("content_b64 is not valid base64") from exc
        inline = self.inline_bytes()
        if inline is not None:
            if len(inline) > MAX_INLINE_INPUT_BYTES:
                raise ValueError(f"inline input is larger than {MAX_INLINE_INPUT_BYTES} bytes")
            if self.sha256 is not None and self.sha256 != sha256_hex(inline):
                raise ValueError("sha256 does not match the content")
        return self

    def inline_bytes(self) -> bytes | None:
        if self.content is not None:
            return self.content.encode()
        if self.content_b64 is not None:
            return base64.b64decode(self.content_b64)
        return None


COMPUTE_CAPABILITY_PATTERN = r"^[0-9]{1,2}\.[0-9]{1,2}$"
COUNTRY_PATTERN = r"^[A-Z]{2}$"
CITY_PATTERN = r"^[^\x00-\x1f]{1,64}$"

ComputeCapability = Annotated[str, Field(pattern=COMPUTE_CAPABILITY_PATTERN)]
Country = Annotated[str, Field(pattern=COUNTRY_PATTERN, description="ISO 3166-1 alpha-2.")]
City = Annotated[str, Field(pattern=CITY_PATTERN)]
Organisation = Annotated[str, Field(pattern=NAME_PATTERN)]


def compute_capability_value(text: str) -> int:
    """``"8.6"`` as ``806``: major x 100 + minor, so capabilities compare as integers."""
    major, minor = text.split(".")
    return int(major) * 100 + int(minor)


GPU_DETAIL_FIELDS = (
    "gpu_model",
    "gpu_vendor",
    "vram_mb",
    "min_compute_capability",
    "max_compute_capability",
)


class Resources(_Strict):
    """What one allocation needs; every GPU field but ``gpu_count`` describes each GPU."""

    cpu: float = Field(default=1.0, gt=0, le=1024, description="CPU cores.")
    memory_mb: int = Field(default=256, ge=16, le=16 * 1024 * 1024)
    disk_mb: int = Field(default=256, ge=1, le=1024 * 1024 * 1024)
    gpu_count: int = Field(default=0, ge=0, le=64)
    gpu_model: str | None = Field(
        default=None, max_length=128, description="Matched case-insensitively as a substring."
    )
    gpu_vendor: str | None = Field(
        default=None, max_length=32, description="For example nvidia, amd; case-insensitive."
    )
    vram_mb: int = Field(default=0, ge=0, le=16 * 1024 * 1024, description="Per GPU, at least.")
    min_compute_capability: ComputeCapability | None = Field(
        default=None, description='Per GPU, at least this CUDA compute capability ("8.0").'
    )
    max_compute_capability: ComputeCapability | None = Field(
        default=None, description="Per GPU, at most this compute capability."
    )

    @model_validator(mode="after")
    def _gpu_fields_need_gpus(self) -> Self:
        if self.gpu_count == 0:
            given = [name for name in GPU_DETAIL_FIELDS if getattr(self, name)]
            if given:
                raise ValueError(f"{', '.join(given)}: need gpu_count of at least 1")
        low, high = self.min_compute_capability, self.max_compute_capability
        if low and high and compute_capability_value(low) > compute_capability_value(high):
            raise ValueError(f"min_compute_capability {low} is above max_compute_capability {high}")
        return self

    def needs_gpu_match(self) -> bool:
        """True when the GPUs must match a model, vendor, VRAM or compute capability."""
        return self.gpu_count > 0 and any(getattr(self, name) for name in GPU_DETAIL_FIELDS)


Architecture = Literal["x86_64", "aarch64", "armv7l", "riscv64"]

Weight = Annotated[float, Field(ge=0, le=100)]


class Preferences(_Strict):
    """Soft preferences: how much each quality of a node counts when ranking candidates.

    Each quality is scored from 0 (worst) to 1 (best); a node's score is the weighted mean
    of the qualities whose weight is above zero. Latency counts only when ``near`` names
    the region it is measured to (usually the consumer's).
    """

    price: Weight = Field(default=1.0, description="Cheaper is better.")
    latency: Weight = Field(default=0.5, description="Lower round trip to `near` is better.")
    reputation: Weight = Field(default=0.5, description="Higher reputation is better.")
    load: Weight = Field(default=0.25, description="More idle CPU is better.")
    success_rate: Weight = Field(default=0.5, description="Past success with this node.")
    near: Region | None = Field(default=None, description="Region latency is measured to.")


class Constraints(_Strict):
    """Hard constraints on where a job may run; an empty accept list accepts anything."""

    regions: list[Region] = Field(default_factory=list, description="Accepted regions; empty: any.")
    exclude_regions: list[Region] = Field(default_factory=list, description="Rejected regions.")
    countries: list[Country] = Field(default_factory=list, description="Accepted countries.")
    exclude_countries: list[Country] = Field(default_factory=list)
    cities: list[City] = Field(default_factory=list, description="Accepted cities (any case).")
    exclude_cities: list[City] = Field(default_factory=list)
    architectures: list[Architecture] = Field(default_factory=list)
    max_price_per_cpu_hour: float | None = Field(default=None, ge=0)
    max_price_per_billion_fuel: float | None = Field(
        default=None, ge=0, description="Highest accepted price per 10^9 wasm fuel."
    )
    max_price_per_gb_out: float | None = Field(
        default=None, ge=0, description="Highest accepted price per 10^9 bytes of output."
    )
    max_price_per_gb_hour: float | None = Field(
        default=None, ge=0, description="Highest accepted price per GB-hour of peak memory."
    )
    providers: list[Did] = Field(
        default_factory=list, description="Allowed provider DIDs; empty: any."
    )
    exclude_providers: list[Did] = Field(default_factory=list, description="Denied providers.")
    organisations: list[Organisation] = Field(
        default_factory=list, description="The node must belong to one of these; empty: any."
    )
    min_reputation: float | None = Field(default=None, ge=0, le=1)
    pinned_node: Did | None = Field(default=None, description="Run only on this provider.")
    preferences: Preferences = Field(default_factory=Preferences)

    @model_validator(mode="after")
    def _no_contradictions(self) -> Self:
        problems = constraint_contradictions(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def constraint_contradictions(rules: Constraints) -> list[str]:
    """Every pair of constraints that no node could satisfy together, naming the fields."""
    problems = []
    pairs = (
        ("regions", "exclude_regions", rules.regions, rules.exclude_regions),
        ("countries", "exclude_countries", rules.countries, rules.exclude_countries),
        (
            "cities",
            "exclude_cities",
            [c.casefold() for c in rules.cities],
            [c.casefold() for c in rules.exclude_cities],
        ),
        ("providers", "exclude_providers", rules.providers, rules.exclude_providers),
    )
    for accept_name, reject_name, accepted, rejected in pairs:
        both = sorted(set(accepted) & set(rejected))
        if both:
            problems.append(f"{accept_name} and {reject_name} both list {', '.join(both)}")
    pinned = rules.pinned_node
    if pinned is not None and pinned in rules.exclude_providers:
        problems.append("pinned_node is listed in exclude_providers")
    if pinned is not None and rules.providers and pinned not in rules.providers:
        problems.append("pinned_node is not among providers")
    return problems


PYTHON_VERSION_PATTERN = r"^3\.[0-9]{1,2}$"
PACKAGE_NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$"
PACKAGE_REQUIREMENT_PATTERN = (
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?(?:==[A-Za-z0-9][A-Za-z0-9.+!_-]{0,62})?$"
)


class RuntimeSpec(_Strict):
    """Software a job needs on the provider: a Python version and packages it can import.

    A node offers runtimes per executor; one that cannot meet every part refuses the job.
    """

    python: str = Field(pattern=PYTHON_VERSION_PATTERN, description='Major.minor, e.g. "3.11".')
    packages: list[Annotated[str, Field(pattern=PACKAGE_REQUIREMENT_PATTERN)]] = Field(
        default_factory=list,
        max_length=32,
        description='Distribution names, each optionally pinned: "numpy" or "numpy==2.4.6".',
    )


VERIFICATION_POLICIES = ("none", "redundant", "adaptive", "audit", "zk")
"""Policy names; all but ``none`` combine with ``+`` (``"adaptive+audit"``)."""

ZK_PROOF_OUTPUT = "zk/proof.json"
"""The output in which a provider returns the proof of a ``zk`` job's inference."""


def verification_policy_names(policy: str) -> frozenset[str]:
    """``"adaptive+audit"`` as ``{"adaptive", "audit"}``; ValueError names what is wrong."""
    names = policy.split("+")
    unknown = sorted({name for name in names if name not in VERIFICATION_POLICIES})
    if unknown:
        raise ValueError(f"unknown policy {', '.join(unknown)}; known: {VERIFICATION_POLICIES}")
    if len(set(names)) != len(names):
        raise ValueError(f"policy {policy!r} names a part twice")
    if "none" in names and len(names) > 1:
        raise ValueError("none does not combine with another policy")
    return frozenset(names)


class Tolerance(_Strict):
    """How far floating-point outputs (``.npy`` tensors) of two replicas may differ.

    Two values agree when ``|a - b| <= abs + rel * |b|``; zero for both means exact.
    """

    abs: float = Field(default=0.0, ge=0, le=1e6)
    rel: float = Field(default=0.0, ge=0, le=1)


class VerificationSpec(_Strict):
    """How the consumer wants results checked before it accepts them.

    ``redundant``: ``k`` agreeing results from distinct providers; ``adaptive``: one more
    replica with a probability that falls as the provider's verified record grows; ``audit``:
    re-execute a random fraction (``audit_rate``, else set by reputation and stake) on another
    provider; ``zk``: a proof of the inference (small ONNX models). On disagreement replicas
    are added until a quorum decides, at most ``n`` in all.
    """

    policy: str = Field(default="none", max_length=64, description='e.g. "adaptive+audit".')
    k: int = Field(default=2, ge=1, le=16, description="Agreeing results a quorum needs.")
    n: int = Field(default=5, ge=1, le=16, description="Most replicas in all, disputes included.")
    audit_rate: float | None = Field(default=None, ge=0, le=1)
    tolerance: Tolerance = Field(default_factory=Tolerance)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        verification_policy_names(value)
        return value

    @model_validator(mode="after")
    def _quorum_fits(self) -> Self:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) is above n ({self.n})")
        return self

    @property
    def policies(self) -> frozenset[str]:
        return verification_policy_names(self.policy)


MIN_CHECKPOINT_INTERVAL_S = 0.1
NETWORK_EXECUTORS = ("process", "docker")
"""The executors whose jobs may declare ``network``."""
STDIN_EXECUTORS = ("process", "wasm")
"""The executors whose jobs may name an input as ``stdin``."""
IMAGE_PATTERN = r"^[a-z0-9][a-z0-9._/:@-]{0,254}$"


class CheckpointSpec(_Strict):
    """A job that keeps its state in ``CMESH_CHECKPOINT_DIR`` so it can resume elsewhere.

    The node snapshots that directory every ``interval_s`` seconds and when the job is
    stopped; a job placed again from a checkpoint finds it restored there before it starts.
    """

    interval_s: float = Field(
        ge=MIN_CHECKPOINT_INTERVAL_S, le=24 * 3600, description="Seconds between snapshots."
    )


class MigrationPolicy(_Strict):
    """Whether a running job may move when a clearly better provider appears (off by default).

    The consumer compares the job's provider with the best provider not on the job, by
    their matching scores under the job's preferences. When the other scores at least
    ``min_gain`` better (relative) and the job has not moved for ``min_interval_s``, the job
    is placed there and the old allocation cancelled. A job with ``checkpoint`` resumes
    from its latest verified checkpoint; any other restarts from the beginning, so enable
    this only for jobs that may restart (stateless ones).
    """

    enabled: bool = False
    min_gain: float = Field(
        default=0.2, gt=0, le=100, description="Relative score gain a move needs: 0.2 is 20 %."
    )
    min_interval_s: float = Field(
        default=30.0, ge=0, le=7 * 24 * 3600, description="Seconds since the job last moved."
    )


class JobSpec(_Strict):
    """A job as the consumer writes it (YAML or JSON)."""

    name: str = Field(pattern=NAME_PATTERN)
    executor: Literal["process", "wasm", "onnx", "docker"] = "process"
    command: list[Annotated[str, Field(max_length=4096)]] = Field(min_length=1, max_length=256)
    env: dict[str, Annotated[str, Field(max_length=4096)]] = Field(default_factory=dict)
    inputs: list[InputFile] = Field(default_factory=list, max_length=256)
    outputs: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Files (relative paths) collected from the work directory after the run.",
    )
    resources: Resources = Field(default_factory=Resources)
    constraints: Constraints = Field(default_factory=Constraints)
    timeout_s: float = Field(default=60.0, gt=0, le=7 * 24 * 3600)
    replicas: int = Field(default=1, ge=1, le=16)
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description="Queue order while capacity is short: higher is placed first.",
    )

    @field_validator("outputs")
    @classmethod
    def _relative_outputs(cls, value: list[str]) -> list[str]:
        return [check_relative_path(path) for path in value]

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not ENV_NAME_PATTERN.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if name.startswith(RESERVED_ENV_PREFIX):
                raise ValueError(f"{name!r}: names starting {RESERVED_ENV_PREFIX} are reserved")
        return value

    @model_validator(mode="after")
    def _unique_input_paths(self) -> Self:
        paths = [item.path for item in self.inputs]
        duplicates = sorted({p for p in paths if paths.count(p) > 1})
        if duplicates:
            raise ValueError(f"input paths repeat: {', '.join(duplicates)}")
        return self

    def is_resolved(self) -> bool:
        """True when every input is inline and content-addressed (ready to send)."""
        return all(item.source is None and item.sha256 is not None for item in self.inputs)

    def cpu_time_limit_s(self) -> float:
        """The CPU seconds one allocation may use: cpu x timeout, rounded up, at least 1."""
        return max(1.0, float(math.ceil(self.timeout_s * self.resources.cpu)))

    def fuel_limit(self) -> int | None:
        """A wasm job's fuel budget: ``fuel``, else ``FUEL_PER_CPU_SECOND`` per second of
        its CPU-time limit; None for the other executors, which are not fuel-metered."""
        if self.executor != "wasm":
            return None
        if self.fuel is not None:
            return self.fuel
        return math.ceil(self.cpu_time_limit_s() * FUEL_PER_CPU_SECOND)

    fuel: int | None = Field(
        default=None,
        ge=1,
        le=10**18,
        description="Fuel budget of a wasm job (deterministic instruction count); "
        "default: derived from the CPU time (cpu x timeout_s).",
    )

    @model_validator(mode="after")
    def _fuel_needs_wasm(self) -> Self:
        if self.fuel is not None and self.executor != "wasm":
            raise ValueError("fuel applies to the wasm executor only")
        return self

    runtime: RuntimeSpec | None = Field(
        default=None,
        description="The Python runtime the job needs; the process and onnx executors offer one.",
    )

    network: bool = Field(
        default=False,
        description="The job needs network access (process and docker jobs only); only "
        "providers that allow it bid, and every other job runs with no network.",
    )

    @model_validator(mode="after")
    def _network_needs_native(self) -> Self:
        if self.network and self.executor not in NETWORK_EXECUTORS:
            raise ValueError(
                f"network applies to the {' and '.join(NETWORK_EXECUTORS)} executors only"
            )
        return self

    stdin: str | None = Field(
        default=None,
        description="One of the job's input paths, fed to the job as its standard input "
        "(process and wasm jobs only); default: empty.",
    )

    @model_validator(mode="after")
    def _stdin_is_an_input(self) -> Self:
        if self.stdin is None:
            return self
        if self.executor not in STDIN_EXECUTORS:
            raise ValueError(f"stdin applies to the {' and '.join(STDIN_EXECUTORS)} executors only")
        if self.stdin not in {item.path for item in self.inputs}:
            raise ValueError(f"stdin {self.stdin!r} is not one of the job's input paths")
        return self

    verification: VerificationSpec | None = Field(
        default=None,
        description="How results are checked; default: the network's policy.",
    )

    @model_validator(mode="after")
    def _zk_needs_onnx(self) -> Self:
        zk = self.verification is not None and "zk" in self.verification.policies
        if zk and self.executor != "onnx":
            raise ValueError("the zk policy applies to the onnx executor only")
        if zk and ZK_PROOF_OUTPUT not in self.outputs:
            raise ValueError(
                f"a zk job must list {ZK_PROOF_OUTPUT} among its outputs (the provider's proof)"
            )
        return self

    checkpoint: CheckpointSpec | None = Field(
        default=None, description="Periodic snapshots of CMESH_CHECKPOINT_DIR; default: none."
    )

    migration: MigrationPolicy | None = Field(
        default=None,
        description="Moving to a clearly better provider while running; default: never.",
    )

    image: str | None = Field(
        default=None,
        pattern=IMAGE_PATTERN,
        description='Container image of a docker job, e.g. "python:3.12-slim".',
    )

    @model_validator(mode="after")
    def _image_with_docker(self) -> Self:
        if (self.image is not None) != (self.executor == "docker"):
            raise ValueError("image is required by the docker executor and used by no other")
        return self

    model_creator: Did | None = Field(
        default=None,
        description="The DID paid the model creator's share of each payment for this job; "
        "default: none (that share goes to the network's treasury).",
    )
