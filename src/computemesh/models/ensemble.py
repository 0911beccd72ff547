"""An ensemble: several named allocations placed together under pairwise rules.

Each allocation is a job spec of its own (it runs its own command); the ensemble adds what
relates them: round-trip latency bounds between two allocations, groups that must share a
region, and groups whose members must each run on a different provider (spread).
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from computemesh.models.job import NAME_PATTERN, JobSpec

MAX_ALLOCATIONS = 64

AllocationName = Annotated[str, Field(pattern=NAME_PATTERN)]
AllocationGroup = Annotated[list[AllocationName], Field(min_length=2, max_length=MAX_ALLOCATIONS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencyBound(_Strict):
    """Allocations ``a`` and ``b`` must be placed at most ``max_rtt_ms`` apart (round trip)."""

    a: AllocationName
    b: AllocationName
    max_rtt_ms: float = Field(gt=0, le=60_000)

    @model_validator(mode="after")
    def _two_allocations(self) -> Self:
        if self.a == self.b:
            raise ValueError(f"a and b are both {self.a!r}: a bound joins two allocations")
        return self


class EnsembleSpec(_Strict):
    """Allocations placed together, or not at all.

    Every allocation runs once (``replicas`` 1) and is named by its spec's ``name``. Rules
    refer to allocations by name; a rule naming an unknown allocation, or rules no placement
    could meet together (a spread group with two members pinned to one node, a same-region
    group whose accepted regions do not overlap), are rejected here.
    """

    name: str = Field(pattern=NAME_PATTERN)
    allocations: list[JobSpec] = Field(min_length=1, max_length=MAX_ALLOCATIONS)
    latency: list[LatencyBound] = Field(default_factory=list, max_length=1024)
    same_region: list[AllocationGroup] = Field(
        default_factory=list, description="Each group's allocations share one region."
    )
    spread: list[AllocationGroup] = Field(
        default_factory=list, description="Each group's allocations run on distinct providers."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = self._naming_problems() or self._rule_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def allocation(self, name: str) -> JobSpec:
        """The allocation called ``name``; KeyError if there is none."""
        for spec in self.allocations:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def _naming_problems(self) -> list[str]:
        names = [spec.name for spec in self.allocations]
        problems = []
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            problems.append(f"allocations: names repeat: {', '.join(repeated)}")
        problems.extend(
            f"allocations.{spec.name}: replicas must be 1 in an ensemble"
            for spec in self.allocations
            if spec.replicas != 1
        )
        known = set(names)
        referenced = [
            ("latency", [name for bound in self.latency for name in (bound.a, bound.b)]),
            ("same_region", [name for group in self.same_region for name in group]),
            ("spread", [name for group in self.spread for name in group]),
        ]
        for field, used in referenced:
            unknown = sorted(set(used) - known)
            if unknown:
                problems.append(f"{field}: unknown allocations {', '.join(unknown)}")
        for field, groups in (("same_region", self.same_region), ("spread", self.spread)):
            problems.extend(
                f"{field}: {', '.join(group)} names an allocation twice"
                for group in groups
                if len(set(group)) != len(group)
            )
        return problems

    def _rule_problems(self) -> list[str]:
        problems = []
        for group in self.spread:
            pins = [self.allocation(name).constraints.pinned_node for name in group]
            shared = sorted({pin for pin in pins if pin is not None and pins.count(pin) > 1})
            if shared:
                problems.append(
                    f"spread: {', '.join(group)} pins two allocations to {', '.join(shared)}"
                )
        for group in self.same_region:
            members = [self.allocation(name).constraints for name in group]
            limited = [set(rules.regions) for rules in members if rules.regions]
            excluded = {region for rules in members for region in rules.exclude_regions}
            if limited and not set.intersection(*limited) - excluded:
                problems.append(f"same_region: {', '.join(group)} accept no region in common")
        return problems
