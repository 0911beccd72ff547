"""A network's settlement rules, shared by every ledger backend."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from computemesh.settlement.amounts import Split


@dataclass(frozen=True)
class LedgerSettings:
    """Who the treasury is, how payments split, whose signatures count.

    ``verifiers`` may attest results of any contract (a contract's consumer always may);
    ``arbiters`` sign the fraud records that allow a slash. The embedded ledger fixes these
    in its genesis entry; on chain the split is the deployment's.
    """

    treasury: str
    split: Split = field(default_factory=Split)
    arbiters: frozenset[str] = frozenset()
    verifiers: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {
            "treasury": self.treasury,
            "split": self.split.to_dict(),
            "arbiters": sorted(self.arbiters),
            "verifiers": sorted(self.verifiers),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerSettings:
        return cls(
            treasury=str(data["treasury"]),
            split=Split(**data["split"]),
            arbiters=frozenset(data["arbiters"]),
            verifiers=frozenset(data["verifiers"]),
        )
