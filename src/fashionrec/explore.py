"""The catalog map of the app's explore page: 2-D t-SNE positions of a sample of products.

t-SNE of 3,000 products takes 40-75 s on two busy cores: `fashionrec index` computes it once, after a build
(`write_map`), into a small JSON file in the index directory, so the page opens at once. The app computes it
itself (`layout`) only when the file is missing, e.g. for an index built by an older version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fashionrec.index import IndexStore, write_json_atomic

MAP_FILE = "explore-map.json"
MAP_SAMPLE = 3000  # products on the map: enough to see the catalog's shape, few enough for t-SNE
MIN_ITEMS = 5  # fewer products than this sit at the origin: t-SNE needs a few neighbours


def sample_positions(count: int, sample: int = MAP_SAMPLE) -> np.ndarray:
    """The index positions on the map: a fixed random sample, in index order."""
    return np.sort(np.random.default_rng(0).permutation(count)[:sample])


def layout(vectors: np.ndarray) -> np.ndarray:
    """[N, 2] t-SNE positions of the vectors (after PCA to 50 dimensions): look-alikes sit together."""
    from sklearn.decomposition import PCA  # scikit-learn only when a map is drawn
    from sklearn.manifold import TSNE

    if len(vectors) < MIN_ITEMS:
        return np.zeros((len(vectors), 2))
    reduced = PCA(n_components=min(50, *vectors.shape), random_state=0).fit_transform(vectors)
    return TSNE(
        n_components=2, init="pca", perplexity=min(30.0, len(vectors) / 4), max_iter=500, random_state=0
    ).fit_transform(reduced)


def write_map(index_dir: str | Path, sample: int = MAP_SAMPLE, log: Callable[[str], object] = print) -> Path:
    """Compute the map of an index and store it in the index directory (atomically); skipped when the stored
    map is of the index as it is now (same generation: nothing added, changed or removed since)."""
    store = IndexStore.open(index_dir)
    try:
        path = store.directory / MAP_FILE
        generation = store.generation()
        stored = read_map(store.directory)
        if stored is not None and stored.get("generation") == generation:
            return path
        wanted = sample_positions(store.count(), sample)
        ids: list[str] = []
        vectors: list[np.ndarray] = []
        start = 0
        for items, chunk, _ in store.load():
            rows = wanted[(wanted >= start) & (wanted < start + len(items))] - start
            ids.extend(items[row].id for row in rows)
            vectors.append(chunk[rows])
            start += len(items)
        log(f"Mapping {len(ids):,} products for the app's explore page (t-SNE: about a minute for 3,000)...")
        started = time.perf_counter()
        xy = layout(np.concatenate(vectors) if vectors else np.zeros((0, store.dim)))
        x, y = (np.round(xy[:, axis], 3).tolist() for axis in (0, 1))
        write_json_atomic(path, {"generation": generation, "ids": ids, "x": x, "y": y})
        log(f"Map written to {path} in {time.perf_counter() - started:.0f} s")
        return path
    finally:
        store.close()


def read_map(index_dir: str | Path) -> dict[str, object] | None:
    """The stored map ({generation, ids, x, y}), or None when there is none or it is damaged (then the app
    computes one)."""
    try:
        stored = json.loads((Path(index_dir) / MAP_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or not all(isinstance(stored.get(key), list) for key in ("ids", "x", "y")):
        return None
    if not len(stored["ids"]) == len(stored["x"]) == len(stored["y"]):
        return None
    return stored
