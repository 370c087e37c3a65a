"""Index size on disk, open time, and the top-10 lists of item queries, to compare two index formats.

Runs with any fashionrec version that has `Recommender.open` and `similar_to_item` (so the same
script measures the code before and after a change), writes bench/results/store_size_NAME.json,
and with --compare OTHER.json says how many of the top-10 lists are the same (as sets, and in order).

    PYTHONPATH=src python bench/store_size.py INDEX --name after --compare bench/results/store_size_before_auto.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from common import write_results

from fashionrec.evaluate import evaluate
from fashionrec.search import Recommender

QUERIES = 500
EVAL_QUERIES = 2000
K = 10


def sizes(index: Path) -> dict[str, int]:
    """Bytes of each file of the index directory (uploads/ and SQLite's -shm/-wal scratch files aside)."""
    return {
        path.name: path.stat().st_size
        for path in sorted(index.iterdir())
        if path.is_file() and not path.name.endswith(("-shm", "-wal"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--kind", default="auto", choices=["auto", "exact", "ivf"])
    parser.add_argument("--compare", type=Path, help="another run's results: are the top-10 lists the same?")
    args = parser.parse_args()
    started = time.perf_counter()
    recommender = Recommender.open(args.index, kind=args.kind)
    open_s = time.perf_counter() - started
    ids = sorted(item.id for item in random.Random(0).sample(recommender.items, QUERIES))
    started = time.perf_counter()
    top = {i: [m.id for m in recommender.similar_to_item(i, k=K, collapse=False)] for i in ids}
    query_s = time.perf_counter() - started
    sample = [item.id for item in random.Random(1).sample(recommender.items, EVAL_QUERIES)]
    labels = evaluate(recommender, ["articleType", "baseColour"], [1, 5], queries=sample, progress=False)["labels"]
    files = sizes(args.index)
    total = sum(files.values())
    figures: dict[str, object] = {
        "index": str(args.index),
        "items": len(recommender),
        "files_bytes": files,
        "total_bytes": total,
        "total_mib": round(total / 2**20, 1),
        "bytes_per_item": round(total / len(recommender)),
        "open_s": round(open_s, 2),
        "search": recommender.info()["search"],
        "item_query_mean_ms": round(query_s / len(ids) * 1000, 3),
        **{f"{name} {at}": round(figures[at], 4) for name, figures in labels.items() for at in ("P@1", "P@5")},
        "top10": top,
    }
    if args.compare:
        other = json.loads(args.compare.read_text())["top10"]
        common = [i for i in ids if i in other]
        figures["compared_with"] = str(args.compare)
        figures["same_top10_set"] = round(sum(set(top[i]) == set(other[i]) for i in common) / len(common), 4)
        figures["same_top10_order"] = round(sum(top[i] == other[i] for i in common) / len(common), 4)
        figures["top10_overlap"] = round(sum(len(set(top[i]) & set(other[i])) for i in common) / (K * len(common)), 4)
    for name, value in figures.items():
        if name != "top10":
            print(f"{name}: {value}")
    write_results(f"store_size_{args.name}_{args.kind}", figures)


if __name__ == "__main__":
    main()
