"""The `VectorStore` contract (fashionrec.stores.base), as plain functions any store's tests can run.

Each `check_*` takes a fresh, empty store of dimension DIM (or, for `check_durable`, a function that
opens the same store again) and fails with a message saying which promise was broken. The data are
real-ish: unit vectors drawn from a fixed seed, unit colour vectors, and Kaggle-like metadata.
Stored vectors may be held at reduced precision (float16), so values compare within TOLERANCE.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fashionrec.colour import COLOUR_DIM
from fashionrec.stores.base import Hit, VectorStore

DIM = 8
ITEMS = 60
TOLERANCE = 2e-3  # float16 keeps ~3 decimal digits of a unit vector's components
COLOURS = ("Red", "Blue", "Green")
KINDS = ("Shirts", "Shoes")


def unit_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    """[rows, dim] float32 vectors of unit length, the same for the same seed."""
    data = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def catalog(count: int = ITEMS, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Ids, vectors, colour vectors and metadata of `count` items; item n is "item-n"."""
    ids = [f"item-{n}" for n in range(count)]
    metadata = [
        {"baseColour": COLOURS[n % 3], "articleType": KINDS[n % 2], "year": str(2010 + n % 5)} for n in range(count)
    ]
    return ids, unit_rows(count, DIM, seed), np.abs(unit_rows(count, COLOUR_DIM, seed + 1)), metadata


def filled(store: VectorStore, count: int = ITEMS) -> tuple[list[str], np.ndarray, np.ndarray, list[dict[str, str]]]:
    """The store with `catalog(count)` upserted in two batches; returns what was written."""
    ids, vectors, colours, metadata = catalog(count)
    half = count // 2
    store.upsert(ids[:half], vectors[:half], colours[:half], metadata[:half])
    store.upsert(ids[half:], vectors[half:], colours[half:], metadata[half:])
    return ids, vectors, colours, metadata


def expected_order(vectors: np.ndarray, query: np.ndarray, allowed: list[int]) -> list[int]:
    """Positions among `allowed`, best inner product first."""
    scores = vectors[allowed] @ query
    return [allowed[i] for i in np.argsort(-scores, kind="stable")]


def check_hits(hits: list[Hit], k: int) -> None:
    assert len(hits) <= k, f"{len(hits)} hits for k={k}"
    assert all(isinstance(hit, Hit) and isinstance(hit.id, str) for hit in hits), hits
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True), f"hits not best first: {scores}"
    assert len({hit.id for hit in hits}) == len(hits), f"an id twice: {hits}"


def check_upsert_search(store: VectorStore) -> None:
    """Upserted items are counted and found, best first, with their inner product; a re-upsert replaces."""
    assert store.count() == 0, "a fresh store is not empty"
    assert store.search(unit_rows(1, DIM, 9), 5) == [[]], "an empty store found something"
    ids, vectors, _, _ = filled(store)
    assert store.count() == ITEMS
    queries = vectors[[3, 17, 42]]
    results = store.search(queries, 5)
    assert len(results) == 3, "one list of hits per query row"
    for row, (position, hits) in enumerate(zip((3, 17, 42), results, strict=True)):
        check_hits(hits, 5)
        assert len(hits) == 5
        assert hits[0].id == ids[position], f"query {row}: its own item is not first: {hits}"
        want = [ids[p] for p in expected_order(vectors, queries[row], list(range(ITEMS)))[:5]]
        assert [hit.id for hit in hits] == want, f"query {row}: {hits} instead of {want}"
        for hit in hits:
            score = float(vectors[ids.index(hit.id)] @ queries[row])
            assert abs(hit.score - score) < 10 * TOLERANCE, f"{hit} should score {score:.4f}"
    assert len(store.search(vectors[:1], ITEMS + 10)[0]) == ITEMS, "k above the count: every item once"
    one = store.search(vectors[5], 1)  # a single query as a 1-d vector
    assert len(one) == 1 and one[0][0].id == ids[5]
    moved = unit_rows(1, DIM, 77)
    store.upsert([ids[5]], moved, np.abs(unit_rows(1, COLOUR_DIM, 78)), [{"baseColour": "Red"}])
    assert store.count() == ITEMS, "re-upserting an id added an item"
    assert store.search(moved, 1)[0][0].id == ids[5], "the replaced vector is not searched"
    assert np.allclose(store.vectors([ids[5]])[0], moved[0], atol=TOLERANCE)


def check_filters(store: VectorStore) -> None:
    """Filters keep only items whose value is one of the accepted ones, per column, all columns at once."""
    ids, vectors, _, metadata = filled(store)
    query = vectors[10]

    def allowed(**wanted: tuple[str, ...]) -> list[int]:
        return [n for n, meta in enumerate(metadata) if all(meta.get(c, "") in v for c, v in wanted.items())]

    cases = [
        {"baseColour": ("Red",)},
        {"baseColour": ("Red", "Blue")},
        {"baseColour": ("Blue",), "articleType": ("Shoes",)},
        {"year": ("2012",), "articleType": ("Shirts", "Shoes")},
    ]
    for filters in cases:
        hits = store.search(query, 8, {c: list(v) for c, v in filters.items()})[0]
        check_hits(hits, 8)
        want = [ids[p] for p in expected_order(vectors, query, allowed(**filters))[:8]]
        assert [hit.id for hit in hits] == want, f"filters {filters}: {hits} instead of {want}"
    assert store.search(query, 5, {"baseColour": ["Purple"]}) == [[]], "a value no item has matched something"
    assert store.search(query, 5, {"baseColour": []}) == [[]], "no accepted value matched something"
    few = allowed(baseColour=("Green",), articleType=("Shirts",))
    hits = store.search(query, ITEMS, {"baseColour": ["Green"], "articleType": ["Shirts"]})[0]
    assert sorted(hit.id for hit in hits) == sorted(ids[p] for p in few), "k above the matches: every match once"
    excluded = {ids[10], ids[few[0]], ids[few[1]]}
    hits = store.search(query, 8, {"baseColour": ["Green"]}, exclude=excluded)[0]
    assert not excluded & {hit.id for hit in hits}, "an excluded id came back"
    want = [ids[p] for p in expected_order(vectors, query, allowed(baseColour=("Green",))) if ids[p] not in excluded]
    assert [hit.id for hit in hits] == want[:8], f"filter + exclude: {hits} instead of {want[:8]}"
    plain = store.search(query, 5, exclude=[ids[10]])[0]
    assert ids[10] not in {hit.id for hit in plain} and len(plain) == 5, "exclude without filters"
    store.upsert([ids[0]], vectors[:1], np.abs(unit_rows(1, COLOUR_DIM, 5)), [{"baseColour": "Purple"}])
    hits = store.search(query, 5, {"baseColour": ["Purple"]})[0]
    assert [hit.id for hit in hits] == [ids[0]], "re-upserted metadata is not what filters read"


def check_delete(store: VectorStore) -> None:
    """Deleted items are gone from count, search, vectors and colours; unknown ids are ignored."""
    ids, vectors, _, _ = filled(store)
    assert store.delete([ids[3], ids[4], "no-such-item"]) == 2, "delete counts the items that were there"
    assert store.delete([ids[3]]) == 0, "deleting twice removed something"
    assert store.count() == ITEMS - 2
    found = {hit.id for hits in store.search(vectors[[3, 4]], 10) for hit in hits}
    assert not found & {ids[3], ids[4]}, "a deleted item was found"
    assert store.search(vectors[5], 1)[0][0].id == ids[5], "the other items moved"
    for read in (store.vectors, store.colours):
        try:
            read([ids[3]])
        except KeyError:
            pass
        else:
            raise AssertionError(f"{read.__name__} of a deleted item did not raise KeyError")
    store.upsert([ids[3]], vectors[3:4], np.abs(unit_rows(1, COLOUR_DIM, 3)), [{"baseColour": "Red"}])
    assert store.search(vectors[3], 1)[0][0].id == ids[3], "a deleted id cannot be added again"
    assert store.delete(ids) == ITEMS - 1 and store.count() == 0
    assert store.search(vectors[:1], 3) == [[]]


def check_vectors_and_colours(store: VectorStore) -> None:
    """vectors(ids) and colours(ids) give float32 rows in the order asked; KeyError for an unknown id."""
    ids, vectors, colours, _ = filled(store)
    asked = [ids[9], ids[2], ids[40], ids[2]]
    got = store.vectors(asked)
    assert got.dtype == np.float32 and got.shape == (4, DIM), (got.dtype, got.shape)
    assert np.allclose(got, vectors[[9, 2, 40, 2]], atol=TOLERANCE), "vectors not the ones stored, in that order"
    got = store.colours(asked)
    assert got.dtype == np.float32 and got.shape == (4, COLOUR_DIM), (got.dtype, got.shape)
    assert np.allclose(got, colours[[9, 2, 40, 2]], atol=TOLERANCE), "colours not the ones stored, in that order"
    assert store.vectors([]).shape == (0, DIM) and store.colours([]).shape == (0, COLOUR_DIM)
    for read in (store.vectors, store.colours):
        try:
            read([ids[0], "no-such-item"])
        except KeyError as error:
            assert "no-such-item" in str(error), f"the KeyError does not name the id: {error}"
        else:
            raise AssertionError(f"{read.__name__} of an unknown id did not raise KeyError")


def check_stream(store: VectorStore) -> None:
    """stream() gives every item once, in batches of at most `batch`, with its vector and colour."""
    ids, vectors, colours, _ = filled(store)
    seen: list[str] = []
    for batch_ids, batch_vectors, batch_colours in store.stream(batch=7):
        assert 0 < len(batch_ids) <= 7, f"a batch of {len(batch_ids)}"
        assert batch_vectors.shape == (len(batch_ids), DIM) and batch_colours.shape == (len(batch_ids), COLOUR_DIM)
        rows = [ids.index(i) for i in batch_ids]
        assert np.allclose(batch_vectors, vectors[rows], atol=TOLERANCE)
        assert np.allclose(batch_colours, colours[rows], atol=TOLERANCE)
        seen.extend(batch_ids)
    assert sorted(seen) == sorted(ids), "stream did not give every item exactly once"


def check_durable(reopen: Callable[[], VectorStore]) -> None:
    """What a store wrote is there, searchable, after it is closed and opened again (another process's view)."""
    store = reopen()
    ids, vectors, colours, _ = filled(store)
    store.delete([ids[0]])
    store.close()
    again = reopen()
    try:
        assert again.count() == ITEMS - 1, f"{again.count()} items after reopening, wrote {ITEMS - 1}"
        assert np.allclose(again.vectors(ids[1:4]), vectors[1:4], atol=TOLERANCE)
        assert np.allclose(again.colours(ids[1:4]), colours[1:4], atol=TOLERANCE)
        assert again.search(vectors[7], 1)[0][0].id == ids[7]
        assert again.search(vectors[0], 1, {"baseColour": [COLOURS[0]]})[0][0].id != ids[0], "a deleted item is back"
        assert again.search(vectors[3], 1, {"baseColour": [COLOURS[0]]})[0][0].id == ids[3], "filters lost on reopen"
    finally:
        again.close()
