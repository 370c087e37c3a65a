"""Exact and approximate (IVF) search structures: recall against exact search, filters, float16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fashionrec.build import BuildReport
from fashionrec.search import Recommender
from fashionrec.stores.faiss_index import ANN_THRESHOLD, PRODUCT_QUERIES, SMALL_SELECTION, FaissIndex

from conftest import copy_index

DIM = 64


def clustered(count: int, seed: int) -> np.ndarray:
    centres = np.random.default_rng(1).standard_normal((300, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, 300, count)] + 0.5 * rng.standard_normal((count, DIM)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(ANN_THRESHOLD + 20_000, seed=0)


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def test_auto_picks_exact_for_small_and_ivf_for_large_catalogs(data: np.ndarray) -> None:
    assert FaissIndex(DIM, 1000).kind == "exact"
    assert FaissIndex(DIM, len(data)).kind == "ivf"
    assert FaissIndex(DIM, len(data), "exact").kind == "exact"
    with pytest.raises(ValueError, match="unknown index kind"):
        FaissIndex(DIM, 10, "hnsw")  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [6, 40])
def test_many_queries_answered_by_a_matrix_product_as_faiss_answers_them(data: np.ndarray, k: int) -> None:
    stored = data[:30]
    exact = FaissIndex.build(DIM, len(stored), lambda: [stored], "exact")
    queries = data[100 : 100 + 3 * PRODUCT_QUERIES]
    scores, positions = exact.search(queries, k)  # the matrix product: more queries than PRODUCT_QUERIES
    faiss_scores, faiss_positions = exact.index.search(queries, k)
    assert np.array_equal(positions, faiss_positions)  # k=40 > 30 items: padded with -1 as FAISS pads
    assert np.allclose(scores, faiss_scores, atol=1e-5)


@pytest.mark.parametrize("precision", ["float32", pytest.param("float16", marks=pytest.mark.slow)])
def test_ivf_recall_against_exact_search(data: np.ndarray, precision: str) -> None:
    queries = clustered(100, seed=2)
    exact = FaissIndex.build(DIM, len(data), lambda: [data[:20_000], data[20_000:]], "exact")
    ivf = FaissIndex.build(DIM, len(data), lambda: [data[:20_000], data[20_000:]], "ivf", precision)  # type: ignore[arg-type]
    assert ivf.index.nprobe < ivf.index.nlist  # really approximate
    truth = exact.search(queries, 10)[1]
    assert recall_at_10(ivf.search(queries, 10)[1], truth) >= 0.95
    np.testing.assert_allclose(ivf.vectors([5, 17]), data[[5, 17]], atol=2e-3)


def test_filters_keep_their_recall_with_ivf(data: np.ndarray) -> None:
    exact = FaissIndex.build(DIM, len(data), lambda: [data], "exact")
    ivf = FaissIndex.build(DIM, len(data), lambda: [data], "ivf")
    rng = np.random.default_rng(3)
    queries = clustered(50, seed=4)
    for size in (500, SMALL_SELECTION + 5_000):
        allowed = np.sort(rng.choice(len(data), size, replace=False))
        truth = exact.search(queries, 10, allowed)[1]
        found = ivf.search(queries, 10, allowed)[1]
        assert np.isin(found, allowed).all() and np.isin(truth, allowed).all()
        assert recall_at_10(found, truth) >= (1.0 if size <= SMALL_SELECTION else 0.9)
    few = np.array([3, 9, 27])
    scores, found = ivf.search(queries[:1], 10, few)
    assert set(found[0][:3]) == set(few) and (found[0][3:] == -1).all()


def test_recommender_answers_the_same_with_any_structure(built_index: tuple[Path, BuildReport]) -> None:
    exact = Recommender.open(built_index[0], kind="exact")
    ivf = Recommender.open(built_index[0], kind="ivf", precision="float16")
    assert ivf.info()["search"] == "ivf (float16)"
    for item in exact.items[:20]:
        expected = [m.id for m in exact.similar_to_item(item.id, k=5)]
        assert [m.id for m in ivf.similar_to_item(item.id, k=5)] == expected  # few cells: all probed
        gender = item.metadata["gender"]
        filtered = ivf.similar_to_item(item.id, k=5, filters={"gender": gender})
        assert all(m.metadata["gender"] == gender for m in filtered)


def test_trained_ivf_cells_are_kept_in_the_index_without_the_vectors(
    built_index: tuple[Path, BuildReport], tmp_path: Path
) -> None:
    index = tmp_path / "idx"
    copy_index(built_index[0], index)
    first = Recommender.open(index, kind="ivf")
    (cached,) = index.glob("ivf-float16-*.faiss")
    assert cached.stat().st_size < len(first) * 1280 * 2 / 4  # the cells only: the vectors are stored once
    again = Recommender.open(index, kind="ivf")
    assert again.info()["search"] == "ivf (float16)" and len(again) == len(first)
    for item in first.items[:10]:
        assert again.similar_to_item(item.id, k=5) == first.similar_to_item(item.id, k=5)
    again.remove_item(first.items[0].id)  # a small change: the cells still serve
    reopened = Recommender.open(index, kind="ivf")
    assert len(reopened) == len(first) - 1 and cached.exists()
    assert first.items[0].id not in {m.id for m in reopened.similar_to_item(first.items[1].id, k=20)}
