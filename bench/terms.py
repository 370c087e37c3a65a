""" "Like this, but in another colour": held-out catalog items asked for a colour their articleType comes in.

Each query is [item ID (weight 1), colour C (weight W)], C drawn among the colours that at least 5 items
of the query's articleType have, other than its own. Score: share of the top 5 with the query's
articleType AND colour C (issue #15 target: >= 0.8). Per colour strategy (Recommender.similar_to_terms:
direction / rerank / label) and colour weight; "item only" is the query without the colour term and
"filter" the item with a hard baseColour filter (references). Queries use stored vectors: no embedding.

    python bench/terms.py [--index /work/indexes/full] [--queries 300] [--name terms]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import write_results

from fashionrec.quality.config import TrainConfig
from fashionrec.quality.train import heldout_mask
from fashionrec.search import Match, Recommender
from fashionrec.terms import COLOUR_COLUMN, TYPE_COLUMN, Term

K = 5
MIN_PAIR = 5  # items of (articleType, colour) needed for a full top 5 to exist
WEIGHTS = (0.25, 0.5, 1.0, 2.0)


def colour_queries(recommender: Recommender, count: int, seed: int) -> list[tuple[str, str]]:
    """(held-out item id, asked colour) pairs, the same for a seed: the training split of TrainConfig."""
    items = recommender.items
    config = TrainConfig()
    heldout = np.flatnonzero(heldout_mask([item.id for item in items], config.holdout, config.seed))
    pairs: dict[tuple[str, str], int] = {}
    for item in items:
        key = (item.metadata.get(TYPE_COLUMN, ""), item.metadata.get(COLOUR_COLUMN, ""))
        pairs[key] = pairs.get(key, 0) + 1
    by_type: dict[str, list[str]] = {}
    for (kind, colour), n in sorted(pairs.items()):
        if n >= MIN_PAIR and colour.strip():
            by_type.setdefault(kind, []).append(colour)
    rng = np.random.default_rng(seed)
    queries = []
    for position in rng.permutation(heldout):
        metadata = items[position].metadata
        options = [c for c in by_type.get(metadata.get(TYPE_COLUMN, ""), []) if c != metadata.get(COLOUR_COLUMN)]
        if options:
            queries.append((items[position].id, options[rng.integers(len(options))]))
        if len(queries) == count:
            break
    return queries


def share(recommender: Recommender, item_id: str, colour: str, found: list[Match]) -> float:
    wanted = recommender.item(item_id).metadata.get(TYPE_COLUMN)
    hits = sum(m.metadata.get(TYPE_COLUMN) == wanted and m.metadata.get(COLOUR_COLUMN) == colour for m in found)
    return hits / K


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("/work/indexes/full"))
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="terms", help="results file bench/results/NAME.json")
    args = parser.parse_args()

    recommender = Recommender.open(args.index)
    queries = colour_queries(recommender, args.queries, args.seed)
    started = time.perf_counter()
    recommender.snapshot.colour_model  # noqa: B018 - learnt once, timed on its own
    learn_s = time.perf_counter() - started
    settings: dict[str, object] = {
        "item only": lambda q, c: recommender.similar_to_terms([Term("item", q)], K),
        "filter (reference)": lambda q, c: recommender.similar_to_item(q, K, {COLOUR_COLUMN: c}),
    }
    for strategy in ("direction", "rerank", "label"):
        for weight in WEIGHTS:
            settings[f"{strategy} w={weight:g}"] = lambda q, c, s=strategy, w=weight: recommender.similar_to_terms(
                [Term("item", q), Term("colour", c, w)], K, colour=s
            )
    results = {}
    for name, run in settings.items():
        started = time.perf_counter()
        scores = [share(recommender, q, c, run(q, c)) for q, c in queries]  # type: ignore[operator]
        took = (time.perf_counter() - started) / len(queries)
        results[name] = {"type_and_colour_at_5": round(float(np.mean(scores)), 4), "ms_per_query": round(took * 1e3, 2)}
        print(f"{name:24s} type+colour@5 {np.mean(scores):.3f}   {took * 1e3:6.1f} ms/query", flush=True)
    best = max((n for n in results if "reference" not in n), key=lambda n: results[n]["type_and_colour_at_5"])
    figure = results[best]["type_and_colour_at_5"]
    print(f"best: {best} ({figure:.3f}; target >= 0.8); colours learnt in {learn_s:.2f} s")
    write_results(
        args.name,
        {
            "index": str(args.index),
            "encoder": recommender.info()["encoder"],
            "queries": len(queries),
            "k": K,
            "colour_model_seconds": round(learn_s, 3),
            "settings": results,
            "best": best,
            "command": f"python bench/terms.py --index {args.index} --queries {args.queries} --name {args.name}",
        },
    )


if __name__ == "__main__":
    main()
