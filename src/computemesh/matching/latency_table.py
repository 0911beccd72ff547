"""Measured round trips from each node to regions, and the region-to-region estimate.

Nodes report ``latency_ms`` (region -> round trip in ms). The table keeps one column per
region reported (NaN where a node said nothing), the matching score columns, and derives
the estimate between two regions used for ensembles' latency bounds:

    estimate(g, h) = max(median of reports from g's nodes about h,
                         median of reports from h's nodes about g)

ignoring a direction nobody reported; a pair nobody reported is unreachable (infinite),
and so is a region with itself when no node there reported its own region.
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

from computemesh.matching.scoring import latency_score

log = logging.getLogger(__name__)

MAX_REGION_COLUMNS = 256
"""Reports about further regions are ignored, so adverts cannot grow the table unbounded."""


class LatencyTable:
    """Latency columns by region code, sized like the index's other columns."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.columns: dict[int, NDArray[np.float64]] = {}
        self.scores: dict[int, NDArray[np.float64]] = {}
        self._row_regions: dict[int, list[int]] = {}

    def grow(self, capacity: int) -> None:
        for table in (self.columns, self.scores):
            for code, column in table.items():
                fill = np.nan if table is self.columns else 0.0
                wider = np.full(capacity, fill)
                wider[: self.capacity] = column
                table[code] = wider
        self.capacity = capacity

    def set_row(self, row: int, reports: dict[int, float]) -> None:
        """Replace what ``row`` reported: region code -> round trip in ms."""
        self.clear_row(row)
        kept = []
        for code, rtt in reports.items():
            if code not in self.columns:
                if len(self.columns) >= MAX_REGION_COLUMNS:
                    log.info("latency report about region code %d ignored: table full", code)
                    continue
                self.columns[code] = np.full(self.capacity, np.nan)
                self.scores[code] = np.zeros(self.capacity)
            self.columns[code][row] = rtt
            self.scores[code][row] = latency_score(float(rtt))
            kept.append(code)
        if kept:
            self._row_regions[row] = kept

    def clear_row(self, row: int) -> None:
        for code in self._row_regions.pop(row, []):
            self.columns[code][row] = np.nan
            self.scores[code][row] = 0.0

    def score_column(self, region: int) -> NDArray[np.float64] | None:
        """Latency scores to ``region`` for every row, or None when nobody reported it."""
        return self.scores.get(region)

    def region_estimates(
        self, node_regions: NDArray[np.int32], live: NDArray[np.bool_], regions: int
    ) -> NDArray[np.float64]:
        """The ``regions`` x ``regions`` round-trip estimate (ms) described above."""
        size = len(node_regions)
        directed = np.full((regions, regions), np.nan)
        for target, column in self.columns.items():
            values = column[:size]
            valid = live & ~np.isnan(values)
            if target >= regions or not valid.any():
                continue
            origins, reported = node_regions[valid], values[valid]
            order = np.argsort(origins, kind="stable")
            origins, reported = origins[order], reported[order]
            starts = np.flatnonzero(np.r_[True, origins[1:] != origins[:-1]])
            for chunk_origin, chunk in zip(
                origins[starts], np.split(reported, starts[1:]), strict=True
            ):
                directed[chunk_origin, target] = float(np.median(chunk))
        both: NDArray[np.float64] = np.fmax(directed, directed.T)
        both[np.isnan(both)] = np.inf
        return both
