"""The files store (FAISS over files in the index directory) against the store contract, and what is its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import store_contract
from store_contract import DIM

from fashionrec.build import BuildReport
from fashionrec.catalog import Item
from fashionrec.colour import COLOUR_DIM
from fashionrec.index import MANIFEST, IndexStore, IndexStoreError
from fashionrec.search import Recommender
from fashionrec.stores import SearchSettings, open_store
from fashionrec.stores.files import FilesStore

CHECKS = [
    store_contract.check_upsert_search,
    store_contract.check_filters,
    store_contract.check_delete,
    store_contract.check_vectors_and_colours,
    store_contract.check_stream,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_files_store_keeps_the_contract(check, kind: str, tmp_path: Path) -> None:
    check(FilesStore.open(tmp_path, DIM, SearchSettings(kind=kind)))


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_in_memory_store_keeps_the_contract(check) -> None:
    check(FilesStore.in_memory(DIM))


def test_files_store_is_durable(tmp_path: Path) -> None:
    store_contract.check_durable(lambda: open_store("files", tmp_path, DIM))


def test_another_process_write_is_seen_on_the_next_search(tmp_path: Path) -> None:
    """Two stores over one directory stand for two processes (two API workers): no restart needed."""
    ids, vectors, colours, metadata = store_contract.catalog()
    serving, writing = FilesStore.open(tmp_path, DIM), FilesStore.open(tmp_path, DIM)
    writing.upsert(ids[:40], vectors[:40], colours[:40], metadata[:40])
    assert serving.search(vectors[3], 1)[0][0].id == ids[3]  # loads what is there
    writing.upsert(ids[40:], vectors[40:], colours[40:], metadata[40:])
    writing.delete([ids[3]])
    assert serving.count() == len(ids) - 1
    assert serving.search(vectors[50], 1)[0][0].id == ids[50]
    assert ids[3] not in {hit.id for hit in serving.search(vectors[3], 10)[0]}


def test_vectors_are_stored_once_as_float16(tmp_path: Path) -> None:
    """#16.3: on disk a vector takes 2 bytes a dimension (float32 would be 4), and the IVF files keep the
    trained cells and each row's cell, never the vectors again."""
    dim, count = 1280, 3000
    store = FilesStore.open(tmp_path, dim, SearchSettings(kind="ivf"))
    vectors = store_contract.unit_rows(count, dim, 0)
    metadata = [{"articleType": "Shirts", "productDisplayName": f"Shirt {n}"} for n in range(count)]
    ids = [str(n) for n in range(count)]
    store.upsert(ids, vectors, np.abs(store_contract.unit_rows(count, COLOUR_DIM, 1)), metadata)
    assert store.search(vectors[7], 1)[0][0].id == "7"  # loads: trains and saves the cells
    store.close()  # the write-ahead log folded into the file
    per_item = (tmp_path / "vectors.sqlite").stat().st_size / count
    assert 2 * dim < per_item < 2 * dim + 2 * COLOUR_DIM + 300, per_item  # + metadata, id, SQLite's pages
    (cells,) = tmp_path.glob("ivf-float16-*.faiss")
    assert cells.stat().st_size + cells.with_suffix(".lists.npz").stat().st_size < count * dim  # a fraction
    assert FilesStore.open(tmp_path, dim, SearchSettings(kind="ivf")).search(vectors[9], 1)[0][0].id == "9"


def test_an_index_keeps_its_store(built_index: tuple[Path, BuildReport]) -> None:
    manifest = json.loads((built_index[0] / MANIFEST).read_text())
    assert manifest["store"] == "files"
    with pytest.raises(IndexStoreError, match="keeps its vectors in store 'files', not 'milvus://x.db'"):
        IndexStore.create_or_open(built_index[0], manifest["encoder"], manifest["catalog"], store="milvus://x.db")


def test_an_interrupted_put_leaves_no_item_without_vectors(tmp_path: Path) -> None:
    """put writes the vectors, then the records: killed in between, only vectors without a record remain,
    which searches skip and the next put replaces (index.py's write order)."""
    encoder = {"id": "test@8", "name": "test", "fit": "pad", "dim": DIM, "size": 8}
    records = IndexStore.create_or_open(tmp_path / "idx", encoder, {"path": "catalog"})
    ids, vectors, colours, metadata = store_contract.catalog()
    items = [Item(i, f"images/{i}.jpg", meta) for i, meta in zip(ids, metadata, strict=True)]
    records.put(items[:50], ["h"] * 50, vectors[:50], colours[:50])
    records.store.upsert(ids[50:], vectors[50:], colours[50:], metadata[50:])  # a put killed after its first write
    records.close()
    recommender = Recommender.open(tmp_path / "idx")
    assert len(recommender) == 50 and set(recommender.records.hashes()) == set(ids[:50])  # the rest is embedded again
    found = {m.id for m in recommender.similar_to_item(ids[0], k=49, collapse=False)}
    assert found == set(ids[1:50])  # never an item without its record
    rerun = IndexStore.open(tmp_path / "idx")  # another process, as a rerun of the build is
    rerun.put(items[50:], ["h"] * 10, vectors[50:], colours[50:])
    rerun.close()
    assert recommender.refresh() and len(recommender) == len(ids)
    assert {m.id for m in recommender.similar_to_item(ids[0], k=len(ids), collapse=False)} == set(ids[1:])


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_a_metadata_change_keeps_the_search_structure(kind: str, tmp_path: Path) -> None:
    """An update of metadata alone (PATCH /v1/items) re-codes the filters; the vectors, held exactly as
    stored, are not indexed again (an IVF over 44k items would take seconds)."""
    store = FilesStore.open(tmp_path, DIM, SearchSettings(kind=kind))
    ids, vectors, colours, _ = store_contract.filled(store)
    before = store.snapshot().index
    stored = store.vectors(ids[:3])
    store.upsert(ids[:3], stored, store.colours(ids[:3]), [{"baseColour": "Teal"}] * 3)
    assert store.snapshot().index is before
    hits = store.search(vectors[0], 5, {"baseColour": ["Teal"]})[0]
    assert sorted(hit.id for hit in hits) == sorted(ids[:3])
    store.upsert(ids[:1], vectors[5:6], colours[5:6], [{"baseColour": "Teal"}])  # a new vector: indexed again
    assert store.snapshot().index is not before
    assert {hit.id for hit in store.search(vectors[5], 2)[0]} == {ids[0], ids[5]}  # the same vector now
