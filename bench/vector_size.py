"""Vector size: what float16 storage and IVF (approximate) search cost in quality, and what they save.

On a full index: memory of the search structure, recall@10 against exact float32 search, and
leave-one-out P@5 (articleType, baseColour) for each setting, over the same 3,000 sampled queries.

    python bench/vector_size.py [--index indexes/full]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import faiss
import numpy as np
from common import REPO, write_results

from fashionrec.evaluate import evaluate, nearest
from fashionrec.search import Recommender

SETTINGS = [("exact", "float32"), ("exact", "float16"), ("ivf", "float32"), ("ivf", "float16")]
RECALL_QUERIES = 3000  # a fixed random sample: float16 flat search has no BLAS path, all 44k would take long


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=REPO / "indexes" / "full")
    args = parser.parse_args()
    rows, truth = [], None
    queries = None
    for kind, precision in SETTINGS:
        recommender = Recommender.open(args.index, kind=kind, precision=precision)
        if queries is None:
            queries = np.random.default_rng(0).choice(len(recommender), RECALL_QUERIES, replace=False)
        found = nearest(recommender, queries, 10, progress=False).positions
        truth = found if truth is None else truth
        overlap = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
        ids = [recommender.items[q].id for q in queries]
        labels = evaluate(recommender, ["articleType", "baseColour"], [5], queries=ids, progress=False)["labels"]
        row = {
            "search": kind,
            "precision": precision,
            "memory_mb": round(faiss.serialize_index(recommender.store.snapshot().index.index).nbytes / 2**20, 1),
            "recall@10_vs_exact_float32": round(float(overlap), 4),
            **{f"{name} P@5": round(figures["P@5"], 4) for name, figures in labels.items()},
        }
        print(row, flush=True)
        rows.append(row)
    write_results("vector_size", {"index": str(args.index), "items": len(recommender), "settings": rows})


if __name__ == "__main__":
    main()
