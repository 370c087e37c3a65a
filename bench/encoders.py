"""Is it better than what I had? Every encoder side by side, beside the reference projects' recipe.

The systems fashionrec replaces embed with ResNet-50 (centre crop, global max pooling, L2-normalised)
and search with scikit-learn's brute-force `NearestNeighbors` (euclidean): that recipe is the baseline
row, its P@5 computed from sklearn's own neighbours. Every encoder whose weights are present indexes
the same fixed random subset of the shared catalog; quality is leave-one-out P@5 within the subset
(articleType, baseColour, both), speed is `build_index` images/s and search time per query. Writes
bench/results/encoders.json and bench/results/encoders.md.

    python bench/encoders.py --items 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import numpy as np
from common import RESULTS, catalog_subset, write_results
from sklearn.neighbors import NearestNeighbors

from fashionrec.build import build_index
from fashionrec.catalog import Catalog
from fashionrec.encoder import BACKBONES, Encoder, EncoderError, load_encoder
from fashionrec.evaluate import Neighbours, nearest, score
from fashionrec.search import Recommender

K = 5
LABELS = ["articleType", "baseColour"]
COMBINED = "+".join(LABELS)
SUBSET_WHY = (
    "ResNet-50 embeds ~15 images/s on 2 CPU cores, so the whole 44k catalog would take most of an hour per "
    "ResNet row; P@5 is leave-one-out within the subset, so it is lower than on the full catalog for every row"
)

Knn = Callable[[Recommender, np.ndarray], Neighbours]


def faiss_knn(recommender: Recommender, queries: np.ndarray) -> Neighbours:
    """fashionrec's own search (exact FAISS inner product), as `fashionrec eval` runs it."""
    return nearest(recommender, queries, K, progress=False)


def sklearn_knn(recommender: Recommender, queries: np.ndarray) -> Neighbours:
    """The reference recipe: NearestNeighbors(brute, euclidean) over the vectors, self excluded."""
    vectors = recommender.store.vectors([item.id for item in recommender.items])
    model = NearestNeighbors(n_neighbors=K + 1, algorithm="brute", metric="euclidean").fit(vectors)
    distances, found = model.kneighbors(vectors[queries])
    keep = found != queries[:, None]
    rows = [row[mask][:K] for row, mask in zip(found, keep, strict=True)]
    scores = [-row[mask][:K] for row, mask in zip(distances, keep, strict=True)]
    return Neighbours(queries, np.stack(rows), np.stack(scores))


def measure(catalog: Catalog, encoder: Encoder, knn: Knn) -> dict[str, object]:
    """Index the subset with one encoder, then P@5 and search time with one kNN."""
    with tempfile.TemporaryDirectory() as directory:
        report = build_index(catalog, directory, encoder, progress=False)
        recommender = Recommender.open(directory)
        queries = np.arange(len(recommender))
        started = time.perf_counter()
        neighbours = knn(recommender, queries)
        search_s = time.perf_counter() - started
        labels = score(recommender, neighbours, LABELS, [K])
    return {
        "encoder_id": encoder.id,
        "size": encoder.spec.size,
        "fit": encoder.spec.fit,
        **{f"{name} P@5": round(labels[name]["P@5"], 4) for name in (*LABELS, COMBINED)},  # type: ignore[index]
        "images_per_s": round(report.rate, 1),
        "search_ms_per_query": round(1000 * search_s / len(queries), 3),
        "dim": encoder.dim,
        "bytes_per_vector": 4 * encoder.dim,
    }


def row(label: str, search: str, make: Callable[[], Encoder], catalog: Catalog, knn: Knn) -> dict[str, object]:
    """One table row; an encoder without weights here is listed as such, with how to get them."""
    try:
        encoder = make()
    except EncoderError as error:
        return {"encoder": label, "search": search, "status": "weights not present", "how_to_get": str(error)}
    figures = {"encoder": label, "search": search, "status": "measured", **measure(catalog, encoder, knn)}
    print(figures, flush=True)
    return figures


def markdown(rows: list[dict[str, object]], items: int) -> str:
    lines = [
        f"Leave-one-out P@5 on a fixed random subset of {items} items of the shared catalog (seed 0); "
        f"subset because {SUBSET_WHY}.",
        "",
        "| encoder | search | input | articleType P@5 | baseColour P@5 | both P@5 | images/s | search ms/query "
        "| vector |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "measured":
            lines.append(f"| {r['encoder']} | {r['search']} | | {r['status']} | | | | | |")
            continue
        lines.append(
            f"| {r['encoder']} | {r['search']} | {r['fit']} {r['size']} px | {r['articleType P@5']:.3f} "
            f"| {r['baseColour P@5']:.3f} | {r[f'{COMBINED} P@5']:.3f} | {r['images_per_s']} "
            f"| {r['search_ms_per_query']} | {r['dim']}-d, {r['bytes_per_vector']} B |"
        )
    lines += [f"\n{r['encoder']}: {r['how_to_get']}" for r in rows if r["status"] != "measured"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=5000, help="catalog subset size (default 5000)")
    args = parser.parse_args()
    catalog = catalog_subset(args.items)
    items = len(catalog.items)
    print(f"{items} items: a subset, because {SUBSET_WHY}", flush=True)
    rows = [
        row(
            "reference recipe: resnet50, centre crop, max pooling",
            "sklearn NearestNeighbors",
            lambda: load_encoder("resnet50", fit="crop"),
            catalog,
            sklearn_knn,
        )
    ]
    rows += [row(name, "fashionrec (FAISS)", lambda n=name: load_encoder(n), catalog, faiss_knn) for name in BACKBONES]
    write_results("encoders", {"items": items, "subset_why": SUBSET_WHY, "rows": rows})
    (RESULTS / "encoders.md").write_text(markdown(rows, items))
    print(markdown(rows, items))


if __name__ == "__main__":
    main()
