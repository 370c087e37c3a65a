""" "Like this, but in another colour": held-out catalog items asked for a colour their articleType comes in.

Each query is [item ID (weight 1), colour C (weight 1)], C drawn among the colours that at least 5 items
of the query's articleType have, other than its own. Score: share of the top 5 with the query's
articleType AND colour C (issue #15 target: >= 0.8). Per colour strategy (Recommender.similar_to_terms:
direction / rerank / label) and label weight (0: no labels re-rank, as before it existed; the default
LABEL_WEIGHT); "recommend" is Recommender.recommend([ID], colour=C), what the app's "In another colour" and
POST /v1/recommend call; "item only" is the query without the colour term and "filter" the item with a hard
baseColour filter (references). "cosine" is the results' mean cosine to the query item (stored vectors): what
the re-rank costs in likeness. Queries use stored vectors: no embedding.

What it cannot see: the score counts articleType and baseColour, exactly the labels the re-rank reads, so it
rewards the re-rank by construction; bench/feedback.py --taste measures a shopper who wants other labels.

    python bench/terms.py [--index /work/indexes/base] [--queries 300] [--seed 0] [--name terms]
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
from fashionrec.terms import COLOUR_COLUMN, LABEL_WEIGHT, TYPE_COLUMN, Term

K = 5
MIN_PAIR = 5  # items of (articleType, colour) needed for a full top 5 to exist
LABEL_WEIGHTS = (0.0, 0.05, 0.1, LABEL_WEIGHT)


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


def cosine(recommender: Recommender, item_id: str, found: list[Match]) -> float:
    """The results' mean cosine to the query item (0 for no result)."""
    if not found:
        return 0.0
    store = recommender.store
    return float(np.mean(store.vectors([m.id for m in found]) @ store.vectors([item_id])[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("/work/indexes/base"))
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
        "item only": lambda q, c: recommender.similar_to_terms([Term("item", q)], K, label_weight=0.0),
        "filter (reference)": lambda q, c: recommender.similar_to_item(q, K, {COLOUR_COLUMN: c}),
    }
    for strategy in ("direction", "rerank", "label"):
        for labels in LABEL_WEIGHTS if strategy == "label" else (0.0, LABEL_WEIGHT):
            settings[f"{strategy}, labels {labels:g}"] = lambda q, c, s=strategy, w=labels: (
                recommender.similar_to_terms([Term("item", q), Term("colour", c)], K, colour=s, label_weight=w)
            )
    for labels in (0.0, LABEL_WEIGHT):
        settings[f"recommend, labels {labels:g}"] = lambda q, c, w=labels: recommender.recommend(
            [q], k=K, colour=c, label_weight=w
        )
    results = {}
    for name, run in settings.items():
        started = time.perf_counter()
        found = [(q, c, run(q, c)) for q, c in queries]  # type: ignore[operator]
        took = (time.perf_counter() - started) / len(queries)
        scores = [share(recommender, q, c, matches) for q, c, matches in found]
        likeness = float(np.mean([cosine(recommender, q, matches) for q, _, matches in found]))
        results[name] = {
            "type_and_colour_at_5": round(float(np.mean(scores)), 4),
            "cosine_to_query": round(likeness, 4),
            "ms_per_query": round(took * 1e3, 2),
        }
        print(f"{name:24s} type+colour@5 {np.mean(scores):.3f} cosine {likeness:.3f} {took * 1e3:5.0f} ms", flush=True)
    best = max((n for n in results if "reference" not in n), key=lambda n: results[n]["type_and_colour_at_5"])
    figure = results[best]["type_and_colour_at_5"]
    print(f"best: {best} ({figure:.3f}; target >= 0.8); colours learnt in {learn_s:.2f} s")
    write_results(
        args.name,
        {
            "index": str(args.index),
            "encoder": recommender.info()["encoder"],
            "queries": len(queries),
            "seed": args.seed,
            "k": K,
            "colour_model_seconds": round(learn_s, 3),
            "settings": results,
            "best": best,
            "command": f"python bench/terms.py --index {args.index} --queries {args.queries} --seed {args.seed} "
            f"--name {args.name}",
        },
    )


if __name__ == "__main__":
    main()
