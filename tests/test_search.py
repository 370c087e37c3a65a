"""The Recommender: item queries from stored vectors, filters inside the search, deterministic order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fashionrec.build import BuildReport
from fashionrec.colour import COLOUR_DIM
from fashionrec.filters import FilterError
from fashionrec.index import StoredItem
from fashionrec.search import Query, Recommender, Snapshot, UnknownItemError
from fashionrec.stores.files import FilesStore


@pytest.fixture(scope="module")
def recommender(built_index: tuple[Path, BuildReport]) -> Recommender:
    return Recommender.open(built_index[0])


def test_similar_to_item_never_returns_the_item_itself(recommender: Recommender) -> None:
    for item in recommender.items[:40]:
        matches = recommender.similar_to_item(item.id, k=5)
        assert len(matches) == 5 and item.id not in {m.id for m in matches}
        scores = [m.score for m in matches]
        assert scores == sorted(scores, reverse=True) and [m.rank for m in matches] == [1, 2, 3, 4, 5]


def test_item_queries_use_the_stored_vector_without_loading_the_model(recommender: Recommender) -> None:
    item = recommender.items[0]
    fresh = Recommender.open(recommender.records.directory)
    fresh.similar_to_item(item.id, k=3)
    assert fresh._encoder is None


def test_results_are_deterministic_and_ties_ordered_by_id(recommender: Recommender) -> None:
    item = recommender.items[7]
    assert recommender.similar_to_item(item.id, k=10) == recommender.similar_to_item(item.id, k=10)
    ids = [item.id for item in recommender.items]
    twin, twin_colour = recommender.store.vectors(ids[3:4]), recommender.store.colours(ids[3:4])
    query = Query(twin[0], twin_colour[0])
    ties = recommender.similar(query, k=3)
    assert ties[0].id == recommender.items[3].id
    store = FilesStore.in_memory(recommender.records.dim)  # the same items, and an exact duplicate vector after them
    store.upsert(ids, recommender.store.vectors(ids), recommender.store.colours(ids), [{}] * len(ids))
    store.upsert(["0-duplicate"], twin, twin_colour, [{}])
    duplicate = Snapshot.of([*recommender.items, StoredItem("0-duplicate", "x.jpg", {})], store)
    tied = duplicate.search(query, 2, None, collapse=False)  # collapsed, the twin would be a variant
    assert [m.id for m in tied] == sorted([recommender.items[3].id, "0-duplicate"])


def test_filters_apply_inside_the_search(recommender: Recommender) -> None:
    counts = recommender.metadata["gender"].value_counts()
    gender = counts.index[0]
    for item in recommender.items[:10]:
        matches = recommender.similar_to_item(item.id, k=8, filters={"gender": gender})
        assert len(matches) == 8 and all(m.metadata["gender"] == gender for m in matches)
    colours = list(recommender.metadata["baseColour"].value_counts().index[:2])
    matches = recommender.similar_to_item(recommender.items[0].id, k=5, filters={"baseColour": colours})
    assert all(m.metadata["baseColour"] in colours for m in matches)
    rare = recommender.metadata["articleType"].value_counts().index[-1]
    wanted = int((recommender.metadata["articleType"] == rare).sum())
    first = [recommender.items[0].id]
    query = Query(recommender.store.vectors(first)[0], recommender.store.colours(first)[0])
    matches = recommender.similar(query, k=50, filters={"articleType": rare})
    assert len(matches) == wanted  # all of them, however dissimilar
    with pytest.raises(FilterError, match="no item has articleType='No Such Type'"):  # not a silent empty result
        recommender.similar_to_item(recommender.items[0].id, filters={"articleType": "No Such Type"})


def test_bad_queries_raise_clear_errors(recommender: Recommender) -> None:
    with pytest.raises(UnknownItemError, match="item 'nope' is not in the index"):
        recommender.similar_to_item("nope")
    with pytest.raises(ValueError, match="unknown filter column 'colour'"):
        recommender.similar_to_item(recommender.items[0].id, filters={"colour": "Red"})
    with pytest.raises(ValueError, match="k must be at least 1"):
        recommender.similar(Query(np.zeros(1280, np.float32), np.zeros(COLOUR_DIM, np.float32)), k=0)
    with pytest.raises(ValueError, match="colour weight must be between 0 and 1"):
        recommender.similar_to_item(recommender.items[0].id, colour_weight=1.5)


def test_image_bytes_come_from_the_catalog(recommender: Recommender, sample_catalog: Path) -> None:
    item = recommender.items[0]
    assert recommender.image_bytes(item.id) == (sample_catalog / item.image).read_bytes()
    info = recommender.info()
    assert info["items"] == len(recommender) == 300 and info["dim"] == 1280
    assert "articleType" in info["metadata_columns"]


def test_colour_weight_brings_same_coloured_products_forward(recommender: Recommender) -> None:
    colours = recommender.store.colours([item.id for item in recommender.items])
    gains = []
    for item in recommender.items[:40]:
        query = colours[recommender.positions[item.id]]
        shape = recommender.similar_to_item(item.id, k=5)
        blended = recommender.similar_to_item(item.id, k=5, colour_weight=0.7)
        assert item.id not in {m.id for m in blended}
        similarity = [[colours[recommender.positions[m.id]] @ query for m in found] for found in (shape, blended)]
        gains.append(np.mean(similarity[1]) - np.mean(similarity[0]))
    assert np.mean(gains) > 0.1  # the results' colours are much closer to the query's
    colour_only = recommender.similar_to_item(recommender.items[0].id, k=5, colour_weight=1.0)
    scores = [m.score for m in colour_only]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1.0001 for s in scores)
