"""Search stage: the `Recommender`, one object that the CLI, the API and the app all share.

Cosine similarity over unit vectors (inner product) with FAISS, exact or approximate by catalog
size (vector_index.py). Filters on metadata are applied inside the search, so k results that all
match come back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fashionrec.catalog import ImageSource, Problem
from fashionrec.encoder import Encoder, encoder_for_index
from fashionrec.images import decode, open_image
from fashionrec.index import IndexStore, StoredItem
from fashionrec.vector_index import Kind, Precision, VectorIndex

Filters = Mapping[str, str | Sequence[str]]
TIE_MARGIN = 8  # extra candidates fetched so equal scores can be ordered by id


class UnknownItemError(KeyError):
    """An item id that is not in the index."""

    def __str__(self) -> str:
        return f"item {self.args[0]!r} is not in the index"


@dataclass(frozen=True)
class Match:
    """One recommended product."""

    rank: int
    id: str
    score: float
    image: str
    metadata: dict[str, str]

    def to_dict(self) -> dict[str, object]:
        return {
            "rank": self.rank,
            "id": self.id,
            "score": round(self.score, 6),
            "image": self.image,
            "metadata": self.metadata,
        }


class Recommender:
    """Similar products for an image or a catalog item, over one opened index."""

    def __init__(
        self, store: IndexStore, backend: str = "onnx", kind: Kind = "auto", precision: Precision = "float32"
    ) -> None:
        self.store = store
        self.backend = backend
        self.kind = kind
        self.precision = precision
        self._encoder: Encoder | None = None
        self._lock = threading.Lock()
        catalog = store.manifest.get("catalog", {})
        self.images = ImageSource(Path(catalog["images_root"])) if catalog.get("images_root") else None
        self._load()

    @classmethod
    def open(
        cls, directory: str | Path, *, backend: str = "onnx", kind: Kind = "auto", precision: Precision = "float32"
    ) -> Recommender:
        """Open an index directory; the encoder is loaded on the first image query.

        `kind` picks exact or approximate (ivf) search, `auto` by catalog size; `precision` float16
        halves the memory the vectors take.
        """
        return cls(IndexStore.open(directory), backend, kind, precision)

    def _load(self) -> None:
        self.items: list[StoredItem] = []

        def chunks() -> Iterator[np.ndarray]:
            for items, vectors in self.store.load():
                self.items.extend(items)
                yield vectors

        self.index = VectorIndex.build(self.store.dim, self.store.count(), chunks(), self.kind, self.precision)
        self.positions = {item.id: n for n, item in enumerate(self.items)}
        self.metadata = pd.DataFrame([item.metadata for item in self.items], dtype="string")

    @property
    def encoder(self) -> Encoder:
        """The index's own encoder, loaded once (a few hundred ms) when first needed."""
        with self._lock:
            if self._encoder is None:
                self._encoder = encoder_for_index(self.store.manifest["encoder"], self.backend)
            return self._encoder

    def __len__(self) -> int:
        return len(self.items)

    def item(self, item_id: str | int) -> StoredItem:
        try:
            return self.items[self.positions[str(item_id)]]
        except KeyError:
            raise UnknownItemError(str(item_id)) from None

    def image_bytes(self, item_id: str | int) -> bytes:
        """The catalog image of an item, read from the catalog folder or zip."""
        item = self.item(item_id)
        if self.images is None:
            raise FileNotFoundError("this index does not record where its catalog images are")
        return self.images.read(item.image)

    def embed_image(self, image: str | Path | bytes | Image.Image) -> np.ndarray:
        """The vector of a query image given as a path, raw bytes or a decoded PIL image."""
        size = self.store.manifest["encoder"]["size"]  # type: ignore[index]
        if isinstance(image, bytes):
            image = decode(image, "uploaded image", min_side=size)
        elif not isinstance(image, Image.Image):
            image = open_image(image, min_side=size)
        return self.encoder.embed([image])[0]

    def similar_to_image(
        self, image: str | Path | bytes | Image.Image, k: int = 5, filters: Filters | None = None
    ) -> list[Match]:
        """The k catalog products most similar to an image."""
        return self.similar_to_vector(self.embed_image(image), k, filters)

    def similar_to_item(self, item_id: str | int, k: int = 5, filters: Filters | None = None) -> list[Match]:
        """The k products most similar to a catalog item, from its stored vector; never itself."""
        position = self.positions.get(str(item_id))
        if position is None:
            raise UnknownItemError(str(item_id))
        return self.similar_to_vector(self.index.vectors([position])[0], k, filters, exclude=str(item_id))

    def similar_to_vector(
        self, vector: np.ndarray, k: int = 5, filters: Filters | None = None, exclude: str | None = None
    ) -> list[Match]:
        """Exact cosine search; ties are ordered by id so results are deterministic."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        allowed = self.matching_positions(filters) if filters else None
        wanted = min(k + 1 + TIE_MARGIN, len(self.items))
        if wanted == 0 or (allowed is not None and len(allowed) == 0):
            return []
        scores, positions = self.index.search(vector, wanted, allowed)
        found = [(float(s), self.items[p]) for s, p in zip(scores[0], positions[0], strict=True) if p >= 0]
        found = [(s, item) for s, item in found if item.id != exclude]
        found.sort(key=lambda pair: (-round(pair[0], 5), pair[1].id))
        return [
            Match(rank, item.id, score, item.image, item.metadata)
            for rank, (score, item) in enumerate(found[:k], start=1)
        ]

    def matching_positions(self, filters: Filters) -> np.ndarray:
        """Positions of the items whose metadata match every filter (any of its values)."""
        mask = np.ones(len(self.items), dtype=bool)
        for column, wanted in filters.items():
            if column not in self.metadata.columns:
                raise ValueError(f"unknown filter column {column!r}; columns are {', '.join(self.metadata.columns)}")
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            mask &= self.metadata[column].isin(values).to_numpy(dtype=bool, na_value=False)
        return np.flatnonzero(mask).astype(np.int64)

    def problems(self) -> list[Problem]:
        return self.store.problems()

    def info(self) -> dict[str, object]:
        """What the index is: encoder, dimension, counts, catalog, build state."""
        manifest = self.store.manifest
        return {
            "index": str(self.store.directory),
            "format_version": manifest["format_version"],
            "encoder": manifest["encoder"]["id"],  # type: ignore[index]
            "dim": self.store.dim,
            "search": f"{self.index.kind} ({self.index.precision})",
            "items": len(self.items),
            "problems": len(self.problems()),
            "catalog": manifest.get("catalog", {}).get("path"),  # type: ignore[union-attr]
            "complete": manifest.get("complete", False),
            "updated": manifest.get("updated"),
            "metadata_columns": list(self.metadata.columns),
        }
