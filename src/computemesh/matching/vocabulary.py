"""Categorical values (regions, architectures, executors...) as dense integer codes."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

MISSING = -1
"""The code of "no value" (a node that states no country, for example)."""


class Vocabulary:
    """Strings to codes ``0, 1, 2...`` in order of first sight; append-only.

    A code keeps its meaning for the life of the vocabulary, so columns of codes never need
    rewriting when new values appear.
    """

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self.values: list[str] = []

    def __len__(self) -> int:
        return len(self.values)

    def code(self, value: str | None) -> int:
        """The code of ``value``, adding it if new; ``MISSING`` for None."""
        if value is None:
            return MISSING
        code = self._codes.get(value)
        if code is None:
            code = len(self.values)
            self._codes[value] = code
            self.values.append(value)
        return code

    def find(self, value: str) -> int:
        """The code of ``value`` if known, else ``MISSING``; never adds."""
        return self._codes.get(value, MISSING)

    def known_codes(self, values: Iterable[str]) -> NDArray[np.int32]:
        """The codes of those ``values`` already known (unknown ones match nothing)."""
        codes = sorted({self._codes[v] for v in values if v in self._codes})
        return np.asarray(codes, dtype=np.int32)
