"""Query latency and serving memory over a built index (the real target: the whole 44k catalog).

p50/p99 of `similar_to_image` (a photo's bytes: decode, embed, search) and `similar_to_item` (stored
vector), with and without filters, and the peak RSS of this process, which does what a server does.

    python bench/query_latency.py INDEX_DIR [--precision float16] [--kind exact|ivf] [--name SUFFIX]
"""

from __future__ import annotations

import argparse
import random
import resource
import time
from collections.abc import Callable

import numpy as np
from common import write_results

from fashionrec.search import Recommender

FILTERS = {"gender": "Men", "articleType": "Tshirts", "baseColour": "Black"}


def timed(calls: list[Callable[[], object]]) -> dict[str, float]:
    for call in calls[:5]:  # warm-up
        call()
    times = []
    for call in calls:
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
        "queries": len(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index")
    parser.add_argument("--precision", default="float16", choices=["float32", "float16"])
    parser.add_argument("--kind", default="auto", choices=["auto", "exact", "ivf"])
    parser.add_argument("--image-queries", type=int, default=200)
    parser.add_argument("--item-queries", type=int, default=2000)
    parser.add_argument("--name", default="", help="suffix of the results file (to keep runs side by side)")
    args = parser.parse_args()
    started = time.perf_counter()
    recommender = Recommender.open(args.index, precision=args.precision, kind=args.kind)
    open_s = time.perf_counter() - started
    rng = random.Random(0)
    ids = [item.id for item in rng.sample(recommender.items, args.item_queries)]
    photos = [recommender.image_bytes(i) for i in ids[: args.image_queries]]
    filters = {c: v for c, v in FILTERS.items() if c in recommender.info()["metadata_columns"]}
    figures: dict[str, object] = {
        "index": args.index,
        "items": len(recommender),
        "search": recommender.info()["search"],
        "open_s": round(open_s, 2),
        "image_query": timed([lambda p=p: recommender.similar_to_image(p, k=5) for p in photos]),
        "item_query": timed([lambda i=i: recommender.similar_to_item(i, k=5) for i in ids]),
    }
    for column, value in filters.items():
        only = {column: value}
        figures[f"item_query_filter_{column}={value}"] = timed(
            [lambda i=i, f=only: recommender.similar_to_item(i, k=5, filters=f) for i in ids[:500]]
        )
        figures[f"image_query_filter_{column}={value}"] = timed(
            [lambda p=p, f=only: recommender.similar_to_image(p, k=5, filters=f) for p in photos[:100]]
        )
    figures["serving_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    for name, value in figures.items():
        print(f"{name}: {value}")
    write_results(f"query_latency_{args.precision}_{args.kind}{'_' + args.name if args.name else ''}", figures)


if __name__ == "__main__":
    main()
