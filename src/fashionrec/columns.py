"""Metadata columns as small integer codes: filters compare integers, not strings.

Shared by the Recommender (which resolves filter names and values against what the items hold) and
the files store (which turns filters into the positions its FAISS search may return).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Column:
    """One metadata column: a code per item, and the values the codes stand for."""

    codes: np.ndarray  # [N] int32, an index into `values`
    values: dict[str, int]

    @classmethod
    def of(cls, cells: Sequence[str]) -> Column:
        return cls(np.zeros(0, np.int32), {}).extended(cells)

    def extended(self, cells: Sequence[str]) -> Column:
        """A copy with rows appended; this one is left as it is."""
        values = dict(self.values)
        codes = np.fromiter((values.setdefault(cell, len(values)) for cell in cells), np.int32, len(cells))
        return Column(np.concatenate([self.codes, codes]), values)

    def replaced(self, positions: np.ndarray, cells: Sequence[str]) -> Column:
        """A copy with the rows at `positions` holding `cells`; this one is left as it is."""
        values = dict(self.values)
        codes = self.codes.copy()
        codes[positions] = [values.setdefault(cell, len(values)) for cell in cells]
        return Column(codes, values)

    def matches(self, wanted: Sequence[str]) -> np.ndarray:
        """[N] bool: which items hold any of the wanted values."""
        return np.isin(self.codes, [self.values[v] for v in wanted if v in self.values])


def columns_of(metadata: Sequence[Mapping[str, str]]) -> dict[str, Column]:
    """Every column any item has, "" where an item lacks it."""
    return extended_columns({}, 0, metadata)


def extended_columns(
    columns: Mapping[str, Column], rows: int, metadata: Sequence[Mapping[str, str]]
) -> dict[str, Column]:
    """`columns` of `rows` items with more items appended (a chunk at a time: no list of every item's metadata)."""
    names = dict.fromkeys([*columns, *(name for meta in metadata for name in meta)])
    empty = Column.of([""] * rows)
    return {name: columns.get(name, empty).extended([meta.get(name, "") for meta in metadata]) for name in names}
