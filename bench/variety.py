"""Variety on the whole catalog: how often the top 5 repeat one product, before and after collapse, and MMR.

For N sampled catalog items as queries (`similar_to_item`, top 5): result lists holding a near-duplicate
(same image hash, or vector cosine above DUPLICATE_COSINE) of the query or of a better result; leave-one-out
P@5 of articleType; distinct articleTypes in the top 5; query latency. Also the cosines that set the
threshold: same-hash pairs against each query's nearest neighbour with another image. Writes
bench/results/variety.json and bench/results/variety.png.

    python bench/variety.py [--index /work/indexes/full] [--queries 1000]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
from common import REPO, RESULTS, write_results

from fashionrec.search import DUPLICATE_COSINE, Match, Recommender

K = 5
SETTINGS = {  # name: (collapse, diversity)
    "today (no collapse)": (False, 0.0),
    "collapse": (True, 0.0),
    "collapse + diversity 0.2": (True, 0.2),
    "collapse + diversity 0.4": (True, 0.4),
}
EXAMPLE = "36724"  # the red T-shirt of issue #15, listed as 36724, 39864 and 39865


def duplicates(recommender: Recommender, query: str, matches: list[Match]) -> int:
    """Results that repeat the query or a better result: same image hash, or cosine above the threshold."""
    ids = [query, *(m.id for m in matches)]
    snapshot = recommender.snapshot
    positions = np.array([snapshot.positions[i] for i in ids])
    hashes = [snapshot.items[p].image_hash for p in positions]
    vectors = snapshot.store.vectors(ids)
    cosines = vectors @ vectors.T
    return sum(
        any(hashes[row] == hashes[before] or cosines[row, before] > DUPLICATE_COSINE for before in range(row))
        for row in range(1, len(ids))
    )


def measure(recommender: Recommender, queries: list[str], collapse: bool, diversity: float) -> dict[str, float]:
    laden, repeated, hits, kinds, took = 0, 0, 0, 0, []
    for query in queries:
        started = time.perf_counter()
        found = recommender.similar_to_item(query, K, collapse=collapse, diversity=diversity)
        took.append(time.perf_counter() - started)
        count = duplicates(recommender, query, found)
        laden += count > 0
        repeated += count
        wanted = recommender.item(query).metadata.get("articleType")
        hits += sum(m.metadata.get("articleType") == wanted for m in found)
        kinds += len({m.metadata.get("articleType") for m in found})
    return {
        "lists_with_duplicates": laden,
        "share_with_duplicates": round(laden / len(queries), 4),
        "duplicate_results_per_list": round(repeated / len(queries), 4),
        "articleType_P@5": round(hits / (K * len(queries)), 4),
        "distinct_articleTypes_in_top5": round(kinds / len(queries), 3),
        "p50_ms": round(float(np.median(took)) * 1000, 2),
        "p95_ms": round(float(np.percentile(took, 95)) * 1000, 2),
    }


def threshold_evidence(recommender: Recommender, queries: list[str]) -> dict[str, object]:
    """Cosines of same-image pairs, and of each query's nearest neighbour with another image."""
    same, nearest = [], []
    for query in queries:
        digest = recommender.item(query).image_hash
        found = recommender.similar_to_item(query, 10, collapse=False)
        same += [m.score for m in found if recommender.item(m.id).image_hash == digest]
        nearest += [next((m.score for m in found if recommender.item(m.id).image_hash != digest), np.nan)]
    near = np.array(nearest)
    near = near[~np.isnan(near)]
    return {
        "same_image_pairs": len(same),
        "same_image_cosine_min": round(min(same), 6) if same else None,
        "nearest_other_image_cosine_percentiles": {
            str(q): round(float(np.percentile(near, q)), 4) for q in (50, 90, 99, 99.9)
        },
        "share_nearest_other_image_above": {str(t): round(float((near > t).mean()), 4) for t in (0.98, 0.99, 0.995)},
    }


def chart(figures: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(figures)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, key, title in (
        (axes[0], "share_with_duplicates", "top-5 lists repeating a product"),
        (axes[1], "articleType_P@5", "articleType P@5"),
    ):
        values = [figures[n][key] for n in names]
        axis.barh(names, values, color=["#c44", "#48a", "#6a6", "#8b8"][: len(names)])
        for y, value in enumerate(values):
            axis.text(value, y, f" {value:.3f}", va="center")
        axis.set_title(title)
        axis.invert_yaxis()
        axis.set_xlim(0, max(values) * 1.3 or 1)
    axes[1].set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=REPO.parent / "indexes" / "full")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    recommender = Recommender.open(args.index)
    queries = random.Random(args.seed).sample([item.id for item in recommender.items], args.queries)
    recommender.similar_to_item(queries[0])  # warm up
    figures = {name: measure(recommender, queries, *setting) for name, setting in SETTINGS.items()}
    for name, values in figures.items():
        print(name, values)
    example = {}
    if EXAMPLE in recommender.positions:  # its photo as a shopper's upload, and the item's own "similar"
        photo = recommender.image_bytes(EXAMPLE)
        for name, collapse in (("today", False), ("collapse", True)):
            for how, found in (
                ("photo", recommender.similar_to_image(photo, K, collapse=collapse)),
                ("item", recommender.similar_to_item(EXAMPLE, K, collapse=collapse)),
            ):
                example[f"{how}, {name}"] = [[m.id, round(m.score, 4), list(m.variants)] for m in found]
    write_results(
        "variety",
        {
            "index": str(args.index),
            "search": recommender.info()["search"],
            "items": len(recommender),
            "queries": len(queries),
            "k": K,
            "duplicate_cosine": DUPLICATE_COSINE,
            "threshold_evidence": threshold_evidence(recommender, queries),
            "figures": figures,
            "example_36724": example,
        },
    )
    chart(figures, RESULTS / "variety.png")


if __name__ == "__main__":
    main()
