"""The store seam: where an index keeps its vectors, keyed by item id.

Everything above a store (build, search, the surfaces) talks to this protocol only, so the same code
runs on files in the index directory (FAISS, the default) and on a Milvus server or cluster. Nothing
outside `fashionrec.stores` imports faiss or pymilvus.

Filters are written once, as plain data (`Filters`: column -> accepted values; an item matches when,
for every column, its value is one of the accepted ones), and each store translates them (a FAISS id
selector, a Milvus boolean expression).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

Filters = Mapping[str, Sequence[str]]
KINDS: tuple[str, ...] = ("auto", "exact", "ivf")
PRECISIONS: tuple[str, ...] = ("float32", "float16")
ANN_THRESHOLD = 10_000  # exact p50 is 1.8 ms at 10k and 5.5 ms at 20k on 2 cores (bench/scale.py)


@dataclass(frozen=True)
class SearchSettings:
    """How a store lays out its search structure in memory; a store uses what applies to it.

    `kind`: "exact", "ivf" (approximate) or "auto" (by catalog size); `precision`: "float16" (half the
    memory) or "float32"; `threads`: the cores one search may use (0: all; 1 for a server answering
    requests side by side).
    """

    kind: str = "auto"
    precision: str = "float16"
    threads: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")

    def kind_for(self, size: int) -> str:
        """The structure `kind` means for a catalog of `size` items: "exact" or "ivf" (auto: ivf above
        ANN_THRESHOLD; an empty catalog has no cells to learn: exact)."""
        return "ivf" if size and (self.kind == "ivf" or (self.kind == "auto" and size > ANN_THRESHOLD)) else "exact"


class StoreError(RuntimeError):
    """A store that cannot be opened or used (bad URI, engine not reachable, damaged data)."""


@dataclass(frozen=True)
class Hit:
    """One search result of a store: an item id and its inner-product score with the query."""

    id: str
    score: float


class VectorStore(Protocol):
    """Vectors (unit length for base encoders), colour vectors and filterable metadata, by item id."""

    uri: str  # what the manifest records: "files" or "milvus://..."
    dim: int

    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, colours: np.ndarray, metadata: Sequence[Mapping[str, str]]
    ) -> None:
        """Insert or replace items; durable when it returns."""

    def delete(self, ids: Iterable[str]) -> int:
        """Remove items; returns how many were there."""

    def search(
        self, queries: np.ndarray, k: int, filters: Filters | None = None, exclude: Collection[str] = ()
    ) -> list[list[Hit]]:
        """Per query row, up to k hits best first (highest inner product), matching `filters`, none in `exclude`."""

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """[len(ids), dim] float32 in the order asked; KeyError for an unknown id."""

    def colours(self, ids: Sequence[str]) -> np.ndarray:
        """[len(ids), COLOUR_DIM] float32 in the order asked; KeyError for an unknown id."""

    def count(self) -> int:
        """How many items the store holds."""

    def stream(self, batch: int = 10_000) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        """Every item as (ids, vectors, colours) batches, for training and evaluation (bounded memory)."""

    def close(self) -> None:
        """Release connections and files."""
