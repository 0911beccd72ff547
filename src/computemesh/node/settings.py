"""A provider node's settings, validated once at start and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from computemesh.models.job import REGION_PATTERN


class NodeSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path
    region: str = Field(default="local", pattern=REGION_PATTERN)
    price_per_cpu_hour: float = Field(default=0.10, ge=0)
    sandbox: bool = True
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    advertise_interval_s: float = Field(default=30.0, gt=0)
    max_inline_output_bytes: int = Field(default=256 * 1024, ge=0)
    max_output_bytes: int = Field(default=64 * 1024, ge=0, description="stdout/stderr cap each")
    max_processes: int = Field(default=64, ge=1)
    memory_fraction: float = Field(default=0.8, gt=0, le=1)

    @property
    def work_root(self) -> Path:
        return self.home / "work"

    @property
    def database_path(self) -> Path:
        return self.home / "node.db"
