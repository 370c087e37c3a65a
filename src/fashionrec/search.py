"""Search stage: the `Recommender`, one object that the CLI, the API and the app all share.

Inner product in the index's vector store (stores/: FAISS over files, or Milvus), through the
`VectorStore` protocol only: the cosine for base encoders' unit vectors, the trained similarity for
a trained encoder's (train.Adapter). Filters on metadata are applied inside the store's search, so k
results that all match come back. A product listed under several ids (the same photo) is one result
by default, its other ids its `variants` (`collapse`, bench/variety.py). A product with several photos
has a vector per photo and comes back once, scored by its best photo (bench/multiphoto.py).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from fashionrec.bridge import BRIDGE_MANIFEST, DEFAULT_DIR, BridgeError, TextBridge
from fashionrec.catalog import ImageSource, Item, Problem
from fashionrec.colour import colour_vector
from fashionrec.columns import Column, columns_of
from fashionrec.encoders import Encoder, encoder_for_index
from fashionrec.filters import FilterError, Filters, resolve_filters
from fashionrec.garment import DEFAULT as DEFAULT_ISOLATION
from fashionrec.garment import Method, Region
from fashionrec.garment import isolate as isolate_garment
from fashionrec.garment import regions as find_regions
from fashionrec.images import Box, Detail, crop, decode, match_detail, read_image
from fashionrec.index import (
    UPLOADED,
    UPLOADS,
    DuplicateItemError,
    IndexStore,
    IndexStoreError,
    StoredItem,
    StoredPhoto,
)
from fashionrec.remote import index_images
from fashionrec.runners.stages import content_hash
from fashionrec.stores import Hit, SearchSettings, StoreError, VectorStore
from fashionrec.terms import (
    COLOUR_COLUMN,
    COLOUR_RERANK,
    FEEDBACK_COLOUR,
    LABEL_STEP,
    LABEL_WEIGHT,
    TYPE_COLUMN,
    ColourModel,
    ColourStrategy,
    Term,
    TermError,
    WantedLabels,
    check_terms,
    compose,
    example_terms,
    label_filters,
    trained_labels,
    wanted_labels,
)
from fashionrec.text import TextIndex, check_query

if TYPE_CHECKING:
    import pandas as pd

Group = tuple[float, int, tuple[str, ...]]  # a result before it is a Match: score, position, variant ids
TIE_MARGIN = 8  # extra candidates fetched so equal scores can be ordered by id
RERANK_POOL = 100  # candidates by shape that a colour- or label-weighted query ranks again
DUPLICATE_COSINE = 0.995  # same image re-saved: >= 0.9999; 0.99-0.995 holds look-alike products (bench/variety.py)
SEARCH_ATTEMPTS = 3  # a search that meets an item removed meanwhile runs again on the store's new state
DIVERSITY_POOL = 50  # candidates that maximal marginal relevance picks from (at least 4k)
MAX_COLUMNS = 64  # metadata columns in a whole index that an added item may bring: each widens every row
MAX_METADATA_BYTES = 8 * 1024  # an added item's metadata, as JSON
QUERY_CACHE = 16  # photos kept embedded: the app searches the same photo again on every change of a setting
TextMode = Literal["fused", "bridge", "words"]
TEXT_MODES: tuple[TextMode, ...] = ("fused", "bridge", "words")
TEXT_POOL = 100  # candidates of each text signal that fusion ranks again (at least 4k)
WORDS_WEIGHT = 0.95  # share of the words (BM25) in a fused text score, the rest the bridge's (bench/text_search.py)


log = logging.getLogger(__name__)


class UnknownItemError(KeyError):
    """An item id that is not in the index."""

    def __str__(self) -> str:
        return f"item {self.args[0]!r} is not in the index"


class UnknownPhotoError(UnknownItemError):
    """A photo number that a product does not have (args: item id, number, how many photos it has)."""

    def __str__(self) -> str:
        item_id, number, count = self.args
        return f"item {item_id!r} has no photo {number}: it has {count} (numbered from 0)"


@dataclass(frozen=True)
class Match:
    """One recommended product."""

    rank: int
    id: str
    score: float
    image: str
    metadata: dict[str, str]
    variants: tuple[str, ...] = ()  # ids of the same product under other ids (same image, near-identical vector)
    photos: tuple[str, ...] = ()  # all the product's photos, its main one first; `image` is the one that matched

    @property
    def photo(self) -> int:
        """The number of the matched photo among `photos` (0: the main one)."""
        return self.photos.index(self.image) if self.image in self.photos else 0

    def __post_init__(self) -> None:
        # Rounded, and clipped to the documented [-1, 1]: float16 vectors can add a few 1e-4 to a cosine of 1.
        object.__setattr__(self, "score", round(min(max(float(self.score), -1.0), 1.0), 6))

    def to_dict(self) -> dict[str, object]:
        """The one serialised form of a match: CLI JSON, the API (which adds an image URL), batch files."""
        return {
            "rank": self.rank,
            "id": self.id,
            "score": self.score,
            "image": self.image,
            "metadata": self.metadata,
            "variants": list(self.variants),
            "photos": list(self.photos or (self.image,)),
        }


@dataclass(frozen=True)
class Query:
    """What a search looks for: a shape vector, a colour vector, and how much colour counts (0 to 1); a refined
    query also the catalog labels it wants and how much they count (0 to 1)."""

    vector: np.ndarray
    colour: np.ndarray
    colour_weight: float = 0.0
    labels: WantedLabels | None = None
    label_weight: float = 0.0

    def __post_init__(self) -> None:
        for name, weight in (("colour", self.colour_weight), ("label", self.label_weight)):
            if not 0.0 <= weight <= 1.0:
                raise ValueError(f"{name} weight must be between 0 and 1, got {weight}")

    @property
    def reranked(self) -> bool:
        """Whether the best RERANK_POOL candidates by shape are ranked again (by colour, labels or both)."""
        return self.colour_weight > 0 or (self.labels is not None and self.label_weight > 0)


def blend(scores: np.ndarray, colours: np.ndarray, query_colour: np.ndarray, weight: float) -> np.ndarray:
    """Shape scores [C] of candidates mixed with the similarity of their colours [C, COLOUR_DIM] to the query's."""
    if weight == 0:
        return scores
    return (1.0 - weight) * scores + weight * (colours @ query_colour)


def top_scores(scores: np.ndarray, allowed: np.ndarray | None, pool: int) -> list[tuple[float, int]]:
    """The best `pool` (score, position) pairs with a positive score, among `allowed` positions if given."""
    positions = np.flatnonzero(scores > 0) if allowed is None else allowed[scores[allowed] > 0]
    if len(positions) > pool:
        positions = positions[np.argpartition(-scores[positions], pool - 1)[:pool]]
    return sorted(((float(scores[p]), int(p)) for p in positions), reverse=True)


def fuse(
    by_words: list[tuple[float, int]], by_look: list[tuple[float, int]], words_weight: float = WORDS_WEIGHT
) -> list[tuple[float, int]]:
    """Both text signals as one score: words_weight x the BM25 score over the best one, plus (1 - words_weight) x
    the bridge's cosine scaled from its pool's lowest (0) to its highest (1); a signal that missed an item adds 0.

    Scores, not ranks (reciprocal rank fusion), are mixed: a rare name word puts its product far ahead in BM25,
    and a rank would forget by how far; bench/text_search.py measured both on the validation items.
    """
    totals: dict[int, float] = {}
    if by_words:
        best = max(score for score, _ in by_words)
        for score, position in by_words:
            totals[position] = words_weight * score / best
    if by_look:
        low, high = min(score for score, _ in by_look), max(score for score, _ in by_look)
        for score, position in by_look:
            share = (score - low) / (high - low) if high > low else 1.0
            totals[position] = totals.get(position, 0.0) + (1.0 - words_weight) * share
    return [(total, position) for position, total in totals.items()]


@dataclass(frozen=True)
class Snapshot:
    """The item records a search reads, replaced as a whole on each change (the store keeps its own
    consistent view of the vectors): a query never sees half a write."""

    items: list[StoredItem]
    positions: dict[str, int]  # id -> row in `items`
    columns: dict[str, Column]  # per metadata column: what filters name and the values they may ask for
    store: VectorStore
    photos: dict[str, tuple[StoredPhoto, ...]]  # product id -> its further photos (products that have some)
    owners: dict[str, tuple[int, int]]  # a further photo's key -> its product's row and its number (1, 2, ...)

    @classmethod
    def of(cls, items: list[StoredItem], store: VectorStore, photos: Sequence[StoredPhoto] = ()) -> Snapshot:
        """The snapshot of these records; a photo whose product has no record (its main image failed) is left out."""
        positions = {item.id: n for n, item in enumerate(items)}
        by_product: dict[str, list[StoredPhoto]] = {}
        for photo in photos:
            if photo.product in positions:
                by_product.setdefault(photo.product, []).append(photo)
        return cls(
            items=items,
            positions=positions,
            columns=columns_of([item.metadata for item in items]),
            store=store,
            photos={product: tuple(found) for product, found in by_product.items()},
            owners={
                photo.key: (positions[product], number)
                for product, found in by_product.items()
                for number, photo in enumerate(found, start=1)
            },
        )

    def with_items(self, items: list[StoredItem]) -> Snapshot:
        """A snapshot of other item records with the same photos (those of products still there)."""
        return Snapshot.of(items, self.store, [photo for found in self.photos.values() for photo in found])

    @cached_property
    def photos_per_product(self) -> int:
        """Vectors per product, rounded up: a search takes this many times more candidates from the store."""
        return math.ceil((len(self.items) + len(self.owners)) / len(self.items)) if self.items else 1

    def keys_of(self, item_id: str) -> tuple[str, ...]:
        """The store keys of a product's vectors: its id (main photo), then its further photos' keys."""
        return (item_id, *(photo.key for photo in self.photos.get(item_id, ())))

    def images_of(self, position: int) -> tuple[str, ...]:
        """The images of the product at this row: its main one, then its further photos."""
        item = self.items[position]
        return (item.image, *(photo.image for photo in self.photos.get(item.id, ())))

    def product_query(self, item_id: str, colour_weight: float = 0.0) -> Query:
        """The query of a catalog product: its vector, or for several photos their mean (rescaled to their mean
        length, so scores stay cosines for unit vectors); KeyError if its vectors are gone (removed meanwhile)."""
        keys = list(self.keys_of(item_id))
        vectors, colours = self.store.vectors(keys), self.store.colours(keys)
        if len(keys) == 1:
            return Query(vectors[0], colours[0], colour_weight)
        mean = vectors.mean(axis=0)
        length = float(np.linalg.norm(mean))
        scale = float(np.linalg.norm(vectors, axis=1).mean()) / length if length > 0 else 0.0
        return Query((mean * scale).astype(vectors.dtype), colours.mean(axis=0).astype(colours.dtype), colour_weight)

    def owner(self, key: str) -> tuple[int | None, int]:
        """The product row a stored vector's key belongs to (None for a key without a record) and its photo's
        number (0: the main photo)."""
        position = self.positions.get(key)
        return (position, 0) if position is not None else self.owners.get(key, (None, 0))

    def best_photos(self, hits: list[Hit], scores: Sequence[float]) -> tuple[list[tuple[float, int]], dict[int, int]]:
        """Hits of photos as products: each product's best (score, row), unordered, and the number of the photo
        that scored it (rows whose main photo did are left out). Hits without a record are dropped (see `known`)."""
        best: dict[int, tuple[float, int]] = {}
        for hit, score in zip(hits, scores, strict=True):
            position, number = self.owner(hit.id)
            if position is not None and (position not in best or score > best[position][0]):
                best[position] = (float(score), number)
        return [(score, p) for p, (score, _) in best.items()], {p: n for p, (_, n) in best.items() if n}

    @cached_property
    def text(self) -> TextIndex:
        """BM25 over the items' names and metadata (text.py), built on the first text search (~1 s for 44k)."""
        return TextIndex.of([item.metadata for item in self.items])

    @cached_property
    def image_hashes(self) -> frozenset[str]:
        """The content hashes of the catalog's images (every photo of a product): a query photo that is one of
        them is a catalog image."""
        further = (photo.image_hash for found in self.photos.values() for photo in found)
        return frozenset(h for h in (*(item.image_hash for item in self.items), *further) if h)

    @cached_property
    def metadata(self) -> pd.DataFrame:
        """Every item's metadata as a table, for the app and the evaluation (built on first use: serving
        needs only `columns`, and pandas costs ~75 MB to import)."""
        import pandas

        return pandas.DataFrame([item.metadata for item in self.items], columns=list(self.columns), dtype="string")

    @cached_property
    def colour_model(self) -> ColourModel:
        """Colour directions learnt from this snapshot's items, on the first colour term (about 1 s at 44k)."""
        if COLOUR_COLUMN not in self.columns:
            raise TermError(f"this index has no {COLOUR_COLUMN!r} metadata to learn colours from")
        return ColourModel.learn(
            self.vectors,
            [item.metadata.get(COLOUR_COLUMN, "") for item in self.items],
            [item.metadata.get(TYPE_COLUMN, "") for item in self.items],
            self.store.colours([item.id for item in self.items]),
        )

    def search(
        self,
        query: Query,
        k: int,
        filters: Filters | None,
        exclude: str | None = None,
        collapse: bool = True,
        diversity: float = 0.0,
    ) -> list[Match]:
        """Inner-product search in the store, blended with colour similarity when asked.

        With a colour weight w, the best RERANK_POOL candidates by shape are ranked again by
        (1 - w) * shape similarity + w * colour similarity, then, for a refined query with a label weight l, by
        (1 - l) * that + l * agreement with its wanted labels. Ties are ordered by id. `collapse` shows a
        product listed under several ids once (the others as its `variants`), so k distinct products come
        back; `diversity` (0 to 1) re-ranks by maximal marginal relevance to spread the results.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not 0.0 <= diversity <= 1.0:
            raise ValueError(f"diversity must be between 0 and 1, got {diversity}")
        wanted_values = self.resolve(filters) if filters else None
        pool = max(RERANK_POOL, 4 * k) if query.reranked else k + 1 + TIE_MARGIN
        if collapse:
            pool = max(pool, 2 * k + 1 + TIE_MARGIN)  # room for a few duplicates
        if diversity > 0:
            pool = max(pool, DIVERSITY_POOL, 4 * k)
        for _ in range(SEARCH_ATTEMPTS - 1):
            try:
                return self._matches(*self._groups(query, k, pool, wanted_values, exclude, collapse), k, diversity)
            except KeyError:  # an item was removed between two reads of the store: search its new state
                continue
        return self._matches(*self._groups(query, k, pool, wanted_values, exclude, collapse), k, diversity)

    def _matches(self, groups: list[Group], matched: Mapping[int, int], k: int, diversity: float) -> list[Match]:
        """The first k groups as Matches, after the maximal marginal relevance re-ranking if `diversity` > 0;
        `matched` gives the number of the photo that scored a product (its main one if absent)."""
        if diversity > 0:
            groups = self._diversify(groups, k, diversity)
        matches = []
        for rank, (score, p, variants) in enumerate(groups[:k], start=1):
            item, photos = self.items[p], self.images_of(p)
            matches.append(Match(rank, item.id, score, photos[matched.get(p, 0)], item.metadata, variants, photos))
        return matches

    def search_text(
        self,
        text: str,
        vector: np.ndarray | None,
        k: int,
        filters: Filters | None,
        words: bool = True,
        collapse: bool = True,
        diversity: float = 0.0,
    ) -> list[Match]:
        """Products for a text: its BM25 ranking (`words`), the bridge's `vector` searched in the store, or both
        (`fuse`). Ties are ordered by id; see `search` for the rest."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not 0.0 <= diversity <= 1.0:
            raise ValueError(f"diversity must be between 0 and 1, got {diversity}")
        wanted_values = self.resolve(filters) if filters else None
        allowed = self.resolved_positions(wanted_values) if wanted_values else None
        pool = max(TEXT_POOL, 4 * k)
        by_words = top_scores(self.text.scores(text), allowed, pool) if words else []
        by_look: list[tuple[float, int]] = []
        matched: dict[int, int] = {}
        if vector is not None and self.items:
            (hits,) = self.store.search(vector[None, :], pool * self.photos_per_product, wanted_values)
            by_look, matched = self.best_photos(hits, [hit.score for hit in hits])
        if words and vector is not None:
            found = fuse(by_words, by_look)
        elif words:
            found = [(score / by_words[0][0], p) for score, p in by_words]  # BM25 over the best: in (0, 1]
        else:
            found = by_look
        found.sort(key=lambda pair: (-round(pair[0], 5), self.items[pair[1]].id))
        if not collapse:
            return self._matches([(s, p, ()) for s, p in found], matched, k, diversity)
        head = found[: max(2 * k + 1 + TIE_MARGIN, DIVERSITY_POOL if diversity > 0 else 0)]  # collapsing costs
        groups = self._collapse(head, None)
        if len(groups) < k and len(head) < len(found):  # mostly duplicates: all candidates
            groups = self._collapse(found, None)
        return self._matches(groups, matched, k, diversity)

    def _groups(
        self, query: Query, k: int, pool: int, filters: dict[str, list[str]] | None, exclude: str | None, collapse: bool
    ) -> tuple[list[Group], dict[int, int]]:
        """The best candidates as products (see `_collapse`), looking further while duplicates leave fewer than k;
        and the number of the photo that scored each product (see `best_photos`)."""
        if not self.items:
            return [], {}
        while True:
            found, matched, exhausted = self._candidates(query, pool, filters, exclude)
            groups = self._collapse(found, exclude) if collapse else [(s, p, ()) for s, p in found]
            if len(groups) >= k or exhausted:
                return groups, matched
            pool *= 4  # mostly duplicates (or vectors without a record yet): look further

    def _candidates(
        self, query: Query, wanted: int, filters: dict[str, list[str]] | None, exclude: str | None
    ) -> tuple[list[tuple[float, int]], dict[int, int], bool]:
        """The best `wanted` (score, position) pairs, one per product (its best photo), best first, ties by id,
        without `exclude` (none of its photos); the number of the photo that scored each product; and whether
        the store has no more to give. A product's photos take several of the store's candidates: it is asked for
        `wanted` times the photos per product, and only the best `wanted` products go on (collapsing costs)."""
        asked = wanted * self.photos_per_product
        (hits,) = self.store.search(
            query.vector[None, :], asked, filters, () if exclude is None else self.keys_of(exclude)
        )
        exhausted = len(hits) < asked
        hits = self.known(hits)
        scores = np.array([hit.score for hit in hits], dtype=np.float32)
        if query.colour_weight and hits:
            colours = self.store.colours([hit.id for hit in hits])
            scores = blend(scores, colours, query.colour, query.colour_weight)
        if query.labels is not None and query.label_weight and hits:  # the catalog's labels count too
            products = [self.owner(hit.id)[0] for hit in hits]
            agreement = [query.labels.score(self.items[position].metadata) for position in products]
            scores = (1.0 - query.label_weight) * scores + query.label_weight * np.array(agreement, np.float32)
        found, matched = self.best_photos(hits, scores.tolist())
        found.sort(key=lambda pair: (-round(pair[0], 5), self.items[pair[1]].id))
        return found[:wanted], matched, exhausted and len(found) <= wanted

    def known(self, hits: list[Hit]) -> list[Hit]:
        """The hits that have a record, a product's or a further photo's: a store may briefly hold vectors of an
        item being added or removed (see the write order in index.py)."""
        return [hit for hit in hits if hit.id in self.positions or hit.id in self.owners]

    def vectors(self, positions: Sequence[int]) -> np.ndarray:
        """The stored vectors of the items at these positions."""
        return self.store.vectors([self.items[p].id for p in positions])

    def _collapse(self, found: list[tuple[float, int]], exclude: str | None) -> list[Group]:
        """Candidates grouped into products: a candidate with the image or a near-identical vector (cosine
        above DUPLICATE_COSINE) of a better one is its variant. Duplicates of `exclude` (the query item) are
        dropped: they are the product the shopper is already looking at."""
        query_position = self.positions.get(exclude) if exclude is not None else None
        heads = [query_position] if query_position is not None else []
        try:
            vectors = self.vectors(heads + [p for _, p in found])
        except KeyError:
            if not heads:
                raise
            heads = []  # the query item is being removed: nothing to drop as its duplicate
            vectors = self.vectors([p for _, p in found])
        positions = heads + [p for _, p in found]
        offset = len(heads)  # row of found[0] in `vectors`
        variants: dict[int, list[str]] = {}
        by_hash = {self.items[p].image_hash: 0 for p in heads if self.items[p].image_hash}
        head_rows = list(range(offset))
        for row, p in enumerate(positions[offset:], start=offset):
            digest = self.items[p].image_hash
            same = by_hash.get(digest) if digest else None
            if same is None and head_rows:  # one matrix-vector product: a full matrix costs more on few cores
                cosines = vectors[head_rows] @ vectors[row]
                best = int(np.argmax(cosines))
                same = head_rows[best] if cosines[best] > DUPLICATE_COSINE else None
            if same is None:
                head_rows.append(row)
                variants[row] = []
                if digest:
                    by_hash[digest] = row
            elif same in variants:  # else a duplicate of the query item: dropped
                variants[same].append(self.items[p].id)
        return [(found[row - offset][0], positions[row], tuple(variants[row])) for row in head_rows if row in variants]

    def _diversify(self, groups: list[Group], k: int, diversity: float) -> list[Group]:
        """The k groups picked one by one by maximal marginal relevance: (1 - diversity) * score -
        diversity * the cosine to the closest one already picked; equal values keep the search order."""
        if len(groups) <= 1:
            return groups
        relevance = np.array([score for score, _, _ in groups])
        vectors = self.vectors([p for _, p, _ in groups])
        closest = np.full(len(groups), -np.inf)
        left = np.ones(len(groups), dtype=bool)
        order: list[int] = []
        for _ in range(min(k, len(groups))):
            penalty = np.where(np.isfinite(closest), closest, 0.0)
            value = np.round((1.0 - diversity) * relevance - diversity * penalty, 5)
            pick = int(np.argmax(np.where(left, value, -np.inf)))
            order.append(pick)
            left[pick] = False
            closest = np.maximum(closest, vectors @ vectors[pick])
        return [groups[i] for i in order]

    def resolve(self, filters: Filters) -> dict[str, list[str]]:
        """The filters as this snapshot spells its columns and values (filters.resolve_filters)."""
        return resolve_filters(filters, {name: column.values for name, column in self.columns.items()})

    def matching_positions(self, filters: Filters) -> np.ndarray:
        """Positions of the items whose metadata match every filter (any of its values).

        Names and values match case-insensitively; one the index does not hold raises FilterError with a hint.
        """
        return self.resolved_positions(self.resolve(filters))

    def resolved_positions(self, filters: Mapping[str, list[str]]) -> np.ndarray:
        """`matching_positions` of filters already spelled as this snapshot spells them (`resolve`)."""
        mask = np.ones(len(self.items), dtype=bool)
        for column, wanted in filters.items():
            mask &= self.columns[column].matches(wanted)
        return np.flatnonzero(mask).astype(np.int64)


class Recommender:
    """Similar products for an image or a catalog item, over one opened index.

    Reads are lock-free on the current `Snapshot`; writes (add_item, remove_item, refresh) are
    serialised, and each installs a new snapshot, so concurrent searches stay consistent.
    """

    def __init__(
        self,
        records: IndexStore,
        backend: str = "onnx",
        threads: int = 0,
        isolation: Method = DEFAULT_ISOLATION,
        text_model: str | Path | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        self.records = records  # the index's item records; its vectors are in `store`
        self.store = records.store
        self.isolation = isolation
        self.backend = backend
        self.threads = threads
        self._encoder: Encoder | None = None
        self._bridge: TextBridge | None = None
        self.text_model = Path(text_model) if text_model is not None else records.directory / DEFAULT_DIR
        # the label columns refined queries agree with: given, else the trained encoder's, else type and colour
        self.labels = tuple(labels) if labels is not None else trained_labels(records.manifest["encoder"])  # type: ignore[arg-type]
        if text_model is not None and not (self.text_model / BRIDGE_MANIFEST).is_file():
            raise BridgeError(
                f"{self.text_model}: not a text bridge (no {BRIDGE_MANIFEST}); see `fashionrec train-text`"
            )
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queries: OrderedDict[tuple[str, Box | None, str], Query] = OrderedDict()  # by photo digest
        self._queries_lock = threading.Lock()
        catalog = records.manifest.get("catalog", {})
        self.images = index_images(records.directory, catalog)  # catalog files, and image URLs from the cache
        self.detail = Detail.from_dict(records.manifest.get("detail"))
        self.uploads = ImageSource(records.directory / UPLOADS)  # never the index directory: it holds the database
        self._load()

    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        backend: str = "onnx",
        kind: str = "auto",
        precision: str = "float16",
        threads: int = 0,
        isolation: Method = DEFAULT_ISOLATION,
        text_model: str | Path | None = None,
        labels: Sequence[str] | None = None,
    ) -> Recommender:
        """Open an index directory; the encoder is loaded on the first image query.

        `kind` picks exact or approximate (ivf) search, `auto` by catalog size; `precision` float16
        halves the memory the vectors take; `threads` is the cores one image embedding or one search uses
        (0: all; 1 for a server that serves requests side by side; sets FAISS's for the whole process);
        `isolation` how a query photo's garment is cut out of its scene before embedding (garment.py; `auto`
        by default);
        `text_model` the text bridge that text searches use (default: the index's own text-bridge/ folder, if
        `fashionrec train-text` made one); `labels` the metadata columns whose agreement with the examples counts
        in refined queries (`similar_to_terms`, `recommend`; default: the columns a trained encoder learnt, else
        articleType and baseColour; those the catalog lacks are left out).
        """
        records = IndexStore.open(directory, SearchSettings(kind, precision, threads))
        return cls(records, backend, threads, isolation, text_model, labels)

    def _load(self) -> None:
        self._seen_version = self.records.data_version()  # read before loading: a commit in between reloads again
        items = [item for part in self.records.records() for item in part]
        if items:
            try:  # the store loads now, not on a query
                self.store.search(np.zeros((1, self.records.dim), np.float32), 1)
            except StoreError as error:
                raise IndexStoreError(str(error)) from None
        self.snapshot = Snapshot.of(items, self.store, self.records.photos())

    # The current snapshot's parts; a method that reads several takes `self.snapshot` once instead.
    items = property(lambda self: self.snapshot.items)
    positions = property(lambda self: self.snapshot.positions)
    metadata = property(lambda self: self.snapshot.metadata)

    @property
    def encoder(self) -> Encoder:
        """The index's own encoder, loaded once (a few hundred ms) when first needed."""
        with self._lock:
            if self._encoder is None:
                self._encoder = encoder_for_index(self.records.manifest["encoder"], self.backend, self.threads)
            return self._encoder

    @property
    def bridge(self) -> TextBridge | None:
        """The text bridge (bridge.py), loaded on the first text search; None if the index has none."""
        with self._lock:
            if self._bridge is None and self.has_bridge():
                self._bridge = TextBridge.load(self.text_model, self.records.manifest["encoder"]["id"])  # type: ignore[index]
            return self._bridge

    def has_bridge(self) -> bool:
        return (self.text_model / BRIDGE_MANIFEST).is_file()

    def __len__(self) -> int:
        return len(self.items)

    def item(self, item_id: str | int) -> StoredItem:
        snapshot = self.snapshot
        try:
            return snapshot.items[snapshot.positions[str(item_id)]]
        except KeyError:
            raise UnknownItemError(str(item_id)) from None

    def photos(self, item_id: str | int) -> tuple[str, ...]:
        """The images of a product, its main one first (several when its catalog gives several photos)."""
        snapshot = self.snapshot
        if str(item_id) not in snapshot.positions:
            raise UnknownItemError(str(item_id))
        return snapshot.images_of(snapshot.positions[str(item_id)])

    def photo_counts(self, ids: Sequence[str]) -> list[int]:
        """How many photos each of these products has (1 for an id no longer there: removed meanwhile)."""
        photos = self.snapshot.photos
        return [1 + len(photos.get(item_id, ())) for item_id in ids]

    def image_bytes(self, item_id: str | int, photo: int = 0) -> bytes:
        """The image of an item (its `photo`-th, 0 the main one), read from the catalog folder or zip, or from
        the index if it was uploaded or fetched from a URL (never fetched here). UnknownPhotoError for a photo
        number the product does not have."""
        item, photos = self.item(item_id), self.photos(item_id)
        if not 0 <= photo < len(photos):
            raise UnknownPhotoError(item.id, photo, len(photos))
        if photo:
            item = replace(item, image=photos[photo])
        if item.image.startswith(UPLOADED):
            path = self.records.upload_path(item.image)  # proven to be one of uploads/' own files, or None
            if path is None:
                raise FileNotFoundError(f"item {item.id!r}: its image path is refused (not an uploaded file)")
            return self.uploads.read(path.name)
        if self.images is None:
            raise FileNotFoundError("this index does not record where its catalog images are")
        return self.images.read(item.image)

    def add_item(self, item_id: str, image: bytes, metadata: dict[str, str]) -> StoredItem:
        """Embed and store a new product; once this returns it is on disk and found by every search.

        Raises ImageError for a bad image and DuplicateItemError for an id already in the index.
        """
        if item_id in self.snapshot.positions:  # known now: spare the embedding (the store checks again)
            raise DuplicateItemError(item_id)
        self.check_metadata(metadata)
        query = self._embed(image, as_query=False)
        with self._write_lock:
            stored = self.records.add_item(item_id, image, metadata, query.vector, query.colour)
            if not self._refresh_locked():  # else another process wrote too: reloaded all, this item included
                self.snapshot = self.snapshot.with_items([*self.snapshot.items, stored])
        return stored

    def check_metadata(self, metadata: Mapping[str, str]) -> None:
        """Refuse metadata that would grow the index without bound: each new column widens every item in memory."""
        size = len(json.dumps(metadata, ensure_ascii=False).encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata too large ({size:,} bytes as JSON, limit {MAX_METADATA_BYTES:,} per item)")
        columns = self.snapshot.columns
        new = [name for name in metadata if name not in columns]
        if new and len(columns) + len(new) > MAX_COLUMNS:
            raise ValueError(
                f"too many metadata columns: the index has {len(columns)}, this item adds {len(new)} "
                f"({', '.join(map(repr, new[:5]))}{', ...' if len(new) > 5 else ''}); the limit is {MAX_COLUMNS}. "
                "Use the index's existing columns (GET /v1/info lists them)"
            )

    def update_item(self, item_id: str, changes: Mapping[str, str | None]) -> StoredItem:
        """Change a product's metadata (its image and vectors stay): each column given is set, or removed when
        None; the next search filters on the new values. UnknownItemError if absent."""
        with self._write_lock:
            old = self.snapshot
            position = old.positions.get(item_id)
            if position is None:
                raise UnknownItemError(item_id)
            current = old.items[position]
            metadata = {k: v for k, v in {**current.metadata, **changes}.items() if v is not None}
            self.check_metadata(metadata)
            updated = replace(current, metadata=metadata)
            photos = [Item(photo.key, photo.image, metadata) for photo in old.photos.get(item_id, ())]
            self.records.update_metadata([Item(updated.id, updated.image, updated.metadata), *photos])
            if self._refresh_locked():  # another process wrote too: reloaded all, this change included
                return self.item(item_id)
            self.snapshot = old.with_items([*old.items[:position], updated, *old.items[position + 1 :]])
        return updated

    def items_page(self, offset: int, limit: int) -> tuple[int, list[StoredItem]]:
        """The number of products and `limit` of them from `offset`, in index order (from one snapshot)."""
        items = self.snapshot.items
        return len(items), items[offset : offset + limit]

    def remove_item(self, item_id: str) -> None:
        """Delete a product from the index (and its image, if it was uploaded); UnknownItemError if absent."""
        with self._write_lock:
            if not self.records.remove_item(item_id):
                raise UnknownItemError(item_id)
            if self._refresh_locked():  # another process wrote too: reloaded all, without this item
                return
            self.snapshot = self.snapshot.with_items([item for item in self.snapshot.items if item.id != item_id])

    def is_stale(self) -> bool:
        """Whether another process (another API worker, a rebuild) changed the index: microseconds."""
        return self.records.data_version() != self._seen_version

    def refresh(self) -> bool:
        """Reload if another process (another API worker, a rebuild) changed the index; cheap when none did."""
        if not self.is_stale():
            return False
        with self._write_lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> bool:
        """Reload if the database changed since the last load, other than by this object's own writes."""
        if self.records.data_version() == self._seen_version:
            return False
        self._load()
        return True

    def embed_image(
        self, image: str | Path | bytes | Image.Image, crop_box: Box | None = None, isolate: Method | None = None
    ) -> Query:
        """The query of an image given as a path, raw bytes or a decoded PIL image: its vector and colour.

        `crop_box` (fractions of the photo: left, top, right, bottom) searches for that part only; `isolate`
        (default: the recommender's `isolation`) cuts the garment out of a shopper's photo (see `isolation_for`).
        The photo, or the garment cut out of it, is then brought down to the catalog's level of detail. A file
        is read once (its bytes are hashed, then decoded). The queries of the last QUERY_CACHE photos given as
        bytes or files are kept, so searching one again with other settings is instant.
        """
        name = "uploaded image"
        if isinstance(image, str | Path):
            name, image = str(image), read_image(image)
        if not isinstance(image, bytes):
            method = self.isolation_for(None, crop_box, isolate)
            return self._embed(image, as_query=True, crop_box=crop_box, isolate=method)
        digest = content_hash(image)
        method = self.isolation_for(digest, crop_box, isolate)
        key = (digest, crop_box, method)
        with self._queries_lock:
            if (known := self._queries.get(key)) is not None:
                self._queries.move_to_end(key)
                return known
        query = self._embed(self._decoded(image, name), as_query=True, crop_box=crop_box, isolate=method)
        with self._queries_lock:
            self._queries[key] = query
            while len(self._queries) > QUERY_CACHE:
                self._queries.popitem(last=False)
        return query

    def forget_queries(self) -> None:
        """Empty the cache of query photos (for measurements that change garment.py's settings between calls)."""
        with self._queries_lock:
            self._queries.clear()

    def isolation_for(self, digest: str | None, crop_box: Box | None, isolate: Method | None) -> Method:
        """The isolation a query photo gets: `isolate`, else the recommender's (`auto` by default).

        `auto` leaves alone a photo the shopper already pointed into (a crop box, a garment region) and an
        image of the catalog's own (`digest`, its content hash, is an item's): isolating a catalog shot can
        only lose what its stored vector already matches.
        """
        method = isolate or self.isolation
        if method == "auto" and (crop_box is not None or digest in self.snapshot.image_hashes):
            return "none"
        return method

    def _embed(
        self,
        image: str | Path | bytes | Image.Image,
        as_query: bool,
        crop_box: Box | None = None,
        isolate: Method | None = None,
    ) -> Query:
        """Embed a query, or (as_query=False) a new catalog product exactly as a build would."""
        image = self._decoded(image)
        if crop_box is not None:
            image = crop(image, crop_box)
        readings = [image]  # a new catalog product: as it is
        if as_query:  # the garment, and where garment.py reads the photo two ways, the other reading too
            garment = isolate_garment(image, isolate or self.isolation)
            cut = [g for g in (garment, garment.alternative) if g is not None]
            readings = [match_detail(g.image, self.detail, crop_box is not None or g.cut) for g in cut]
        pixels = np.stack([self.encoder.prepare(reading) for reading in readings])
        vectors = self.encoder.embed_pixels(pixels)
        queries = [Query(vector, colour_vector(p)) for vector, p in zip(vectors, pixels, strict=True)]
        if len(queries) == 1:
            return queries[0]
        return max(queries, key=self._closest_score)  # of equals the first: the garment's own reading

    def _closest_score(self, query: Query) -> float:
        """The score of the query's best match: which reading of a photo the catalog knows best."""
        best = self.snapshot.search(query, 1, None, None, False, 0.0)
        return best[0].score if best else float("-inf")

    def _decoded(self, image: str | Path | bytes | Image.Image, name: str = "uploaded image") -> Image.Image:
        """An image given as a path, raw bytes or a PIL image, decoded (big JPEGs drafted to the model's size)."""
        size = self.records.manifest["encoder"]["size"]  # type: ignore[index]
        if isinstance(image, str | Path):
            name, image = str(image), read_image(image)
        if isinstance(image, bytes):
            return decode(image, name, min_side=size)
        return image

    def regions(self, image: str | Path | bytes | Image.Image) -> list[Region]:
        """The garments found in a shopper's photo (a worn top, trousers, shoes; else the salient object),
        each a crop box to search on its own: a photo of an outfit matches none of its garments well."""
        return find_regions(self._decoded(image))

    def similar_per_region(
        self,
        image: str | Path | bytes | Image.Image,
        k: int = 5,
        filters: Filters | None = None,
        colour_weight: float = 0.0,
        isolate: Method | None = None,
        collapse: bool = True,
        diversity: float = 0.0,
    ) -> list[tuple[Region, list[Match]]]:
        """`similar_to_image` for each region `regions` finds: one list of products per garment of the photo."""
        photo = self._decoded(image)
        return [
            (region, self.similar_to_image(photo, k, filters, colour_weight, region.box, isolate, collapse, diversity))
            for region in find_regions(photo)
        ]

    def similar_to_image(
        self,
        image: str | Path | bytes | Image.Image,
        k: int = 5,
        filters: Filters | None = None,
        colour_weight: float = 0.0,
        crop_box: Box | None = None,
        isolate: Method | None = None,
        collapse: bool = True,
        diversity: float = 0.0,
    ) -> list[Match]:
        """The k catalog products most similar to an image (or the `crop_box` part of it, or the garment that
        `isolate` cuts out of it); colour_weight 0 is shape only, 1 colour only. See `similar` for `collapse`
        and `diversity`."""
        query = self.embed_image(image, crop_box, isolate)
        return self.similar(replace(query, colour_weight=colour_weight), k, filters, None, collapse, diversity)

    def similar_to_item(
        self,
        item_id: str | int,
        k: int = 5,
        filters: Filters | None = None,
        colour_weight: float = 0.0,
        collapse: bool = True,
        diversity: float = 0.0,
    ) -> list[Match]:
        """The k products most similar to a catalog item, from its stored vectors (the mean of its photos'); never
        itself (nor, when collapsing, its duplicates under other ids). See `similar` for `collapse` and `diversity`."""
        snapshot = self.snapshot
        if str(item_id) not in snapshot.positions:
            raise UnknownItemError(str(item_id))
        try:
            query = snapshot.product_query(str(item_id), colour_weight)
        except KeyError:  # removed meanwhile
            raise UnknownItemError(str(item_id)) from None
        return snapshot.search(query, k, filters, str(item_id), collapse, diversity)

    def similar_to_terms(
        self,
        terms: Sequence[Term],
        k: int = 5,
        filters: Filters | None = None,
        colour: ColourStrategy = "label",
        collapse: bool = True,
        diversity: float = 0.0,
        label_weight: float = LABEL_WEIGHT,
    ) -> list[Match]:
        """The k products closest to a query of weighted terms ("like this jacket, in red, not leather").

        Examples (items, images, texts) are summed by weight and moved along each asked colour's
        direction (terms.compose). `colour` says what else a colour term does: "direction" nothing,
        "rerank" also ranks the best candidates again by colour histogram, "label" (default, best measured
        in bench/terms.py) keeps only the items whose catalog colour label is asked (and drops the refused
        ones) and moves a quarter of the way (LABEL_STEP). The best candidates are then ranked again by
        (1 - label_weight) * that score + label_weight * their labels' agreement with the item terms' labels and
        the asked colours (terms.wanted_labels; columns: `labels`). The items given as terms never come back.
        """
        query, filters, seen = self._terms_query(terms, filters, colour, label_weight)
        return self._unseen(self.snapshot, query, k, filters, seen, collapse, diversity)

    def _terms_query(
        self, terms: Sequence[Term], filters: Filters | None, colour: ColourStrategy, label_weight: float
    ) -> tuple[Query, Filters | None, set[str]]:
        """The query of some terms, the filters its colour strategy adds, and the item ids given as terms."""
        check_terms(terms)
        snapshot = self.snapshot
        examples: list[tuple[np.ndarray, np.ndarray | None, float]] = []
        colours: list[tuple[int, float]] = []
        labelled: list[tuple[Mapping[str, str], float]] = []  # the item terms' metadata: what the labels re-rank reads
        for term in terms:
            if term.kind == "colour":
                colours.append((snapshot.colour_model.find(str(term.value)), term.weight))
            elif term.kind == "item":
                ids = [str(term.value)]
                if ids[0] not in snapshot.positions:
                    raise UnknownItemError(ids[0])
                examples.append((snapshot.store.vectors(ids)[0], snapshot.store.colours(ids)[0], term.weight))
                labelled.append((snapshot.items[snapshot.positions[ids[0]]].metadata, term.weight))
            elif term.kind == "image":
                query = self.embed_image(term.value)  # type: ignore[arg-type]
                examples.append((query.vector, query.colour, term.weight))
            else:
                examples.append((self.text_vector(str(term.value)), None, term.weight))
        model = snapshot.colour_model if colours else None
        steps = [(row, weight * (LABEL_STEP if colour == "label" else 1.0)) for row, weight in colours]
        vector, histogram = compose(examples, steps, model)
        asked = model is not None and colour == "rerank" and any(weight > 0 for _, weight in colours)
        named = [(model.names[row], weight) for row, weight in colours] if model is not None else []
        if colour == "label" and model is not None:
            filters = label_filters(
                snapshot.resolve(filters) if filters else None, named, snapshot.columns[COLOUR_COLUMN].values
            )
        seen = {str(term.value) for term in terms if term.kind == "item"}
        columns = [column for column in self.labels if column in snapshot.columns]  # a catalog without them: none
        labels = wanted_labels(labelled, named, columns) if label_weight else None
        query = Query(vector, histogram, COLOUR_RERANK if asked else 0.0, labels, label_weight)
        return query, filters, seen

    def recommend(
        self,
        positive: Sequence[str | bytes | Path],
        negative: Sequence[str | bytes | Path] = (),
        k: int = 5,
        filters: Filters | None = None,
        colour_weight: float = FEEDBACK_COLOUR,
        collapse: bool = True,
        diversity: float = 0.0,
        colour: str | None = None,
        text: str | None = None,
        label_weight: float = LABEL_WEIGHT,
    ) -> list[Match]:
        """Products like the liked examples and unlike the disliked ones, as Qdrant's recommend API with its
        average-vector strategy (picked by bench/feedback.py): 2 * mean(liked) - mean(disliked). An example
        is an item id (str) or an image (path or bytes), and `text` (read by the text bridge) one more liked
        example; liked and disliked items never come back. `colour` asks for products labelled with that colour
        ("in another colour", as a colour term of `similar_to_terms`). The best candidates are ranked again by
        their colour's likeness to the liked examples' colours (`colour_weight`), then by their labels'
        agreement with the liked and disliked items' labels and the asked colour (`label_weight`)."""
        terms = example_terms(positive, negative, text) + ([Term("colour", colour)] if colour else [])
        query, filters, seen = self._terms_query(terms, filters, "label" if colour else "direction", label_weight)
        query = replace(query, colour_weight=colour_weight)
        return self._unseen(self.snapshot, query, k, filters, seen, collapse, diversity)

    def text_vector(self, text: str) -> np.ndarray:
        """A text's vector in the index's image space, from the text bridge: what a text term of a weighted
        query adds (words alone have no vector, so a term needs the bridge)."""
        bridge = self.bridge
        if bridge is None:
            raise TermError(
                f"text term {text[:60]!r}: {self.records.directory} has no text bridge; "
                "train one with `fashionrec train-text INDEX`"
            )
        return bridge.embed([check_query(text)])[0].astype(np.float32)

    @staticmethod
    def _unseen(
        snapshot: Snapshot,
        query: Query,
        k: int,
        filters: Filters | None,
        seen: set[str],
        collapse: bool,
        diversity: float,
    ) -> list[Match]:
        """Search without the `seen` items (and, when collapsing, their duplicates): the shopper knows them."""
        matches = snapshot.search(query, k + len(seen), filters, None, collapse, diversity)
        fresh = [m for m in matches if m.id not in seen and seen.isdisjoint(m.variants)]
        return [replace(match, rank=rank) for rank, match in enumerate(fresh[:k], start=1)]

    def similar_to_text(
        self,
        text: str,
        k: int = 5,
        filters: Filters | None = None,
        mode: TextMode = "fused",
        collapse: bool = True,
        diversity: float = 0.0,
    ) -> list[Match]:
        """The k products that a text describes ("red tshirt for men"): the catalog's own words (BM25, with
        stemming and misspelt words corrected) fused with the text bridge's guess of the product's look.

        `mode` "words" or "bridge" uses one signal only (to measure them); without a bridge, "fused" is words
        only. A score is the fused score (0 to 1), the BM25 score over the best one (words), or the cosine
        (bridge). See `similar` for `collapse` and `diversity`.
        """
        text = check_query(text)
        if mode not in TEXT_MODES:
            raise ValueError(f"text search mode must be one of {', '.join(TEXT_MODES)}, not {mode!r}")
        bridge = self.bridge if mode != "words" else None
        if mode == "bridge" and bridge is None:
            raise ValueError(
                f"{self.records.directory} has no text bridge; train one with `fashionrec train-text INDEX`"
            )
        vector = bridge.embed([text])[0] if bridge is not None else None
        if vector is not None and not vector.any():
            vector = None  # nothing the bridge can read (no letters or digits): words alone decide
        return self.snapshot.search_text(text, vector, k, filters, mode != "bridge", collapse, diversity)

    def similar(
        self,
        query: Query,
        k: int = 5,
        filters: Filters | None = None,
        exclude: str | None = None,
        collapse: bool = True,
        diversity: float = 0.0,
    ) -> list[Match]:
        """Search the current snapshot; ties are ordered by id so results are deterministic.

        `collapse` (default) shows one product listed under several ids (same image, or a vector cosine above
        DUPLICATE_COSINE) once, the other ids as its `variants`; `diversity` from 0 (pure similarity) to 1
        re-ranks by maximal marginal relevance so the k results differ more from each other.
        """
        return self.snapshot.search(query, k, filters, exclude, collapse, diversity)

    def matching_positions(self, filters: Filters) -> np.ndarray:
        """Positions of the items whose metadata match every filter (any of its values)."""
        return self.snapshot.matching_positions(filters)

    def resolve_filters(self, filters: Filters) -> dict[str, list[str]]:
        """Filters spelled as the index spells them (any case given); FilterError, with the closest known names,
        for a column or value the index does not hold. Every search does this itself."""
        return self.snapshot.resolve(filters)

    @property
    def metadata_columns(self) -> list[str]:
        """The metadata columns of the index's items, in first-seen order."""
        return list(self.snapshot.columns)

    def column_values(self, column: str, filters: Filters | None = None) -> list[str]:
        """The values a metadata column holds among the items that match `filters` (every item without),
        sorted: the choices a filter on that column has left once the others are set."""
        snapshot = self.snapshot
        if column not in snapshot.columns:
            raise FilterError(f"unknown filter column {column!r}; columns are {', '.join(snapshot.columns)}")
        codes = snapshot.columns[column].codes
        if filters:
            codes = codes[snapshot.matching_positions(filters)]
        names = list(snapshot.columns[column].values)  # in code order
        return sorted(value for value in (names[code] for code in np.unique(codes)) if value)

    def problems(self) -> list[Problem]:
        return self.records.problems()

    def info(self) -> dict[str, object]:
        """What the index is: encoder, dimension, counts, catalog, build state."""
        manifest, settings = self.records.manifest, self.records.settings
        return {
            "index": str(self.records.directory),
            "format_version": manifest["format_version"],
            "encoder": manifest["encoder"]["id"],  # type: ignore[index]
            "dim": self.records.dim,
            "store": self.store.uri,
            "search": f"{settings.kind_for(len(self.items))} ({settings.precision})",
            "items": len(self.items),
            "problems": len(self.problems()),
            "catalog": manifest.get("catalog", {}).get("path"),  # type: ignore[union-attr]
            "complete": manifest.get("complete", False),
            "updated": manifest.get("updated"),
            "metadata_columns": self.metadata_columns,
            "text_search": "words + text bridge"
            if self.has_bridge()
            else ("words only (no text bridge: train one with `fashionrec train-text INDEX`)"),
        }
