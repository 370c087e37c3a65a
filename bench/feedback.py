"""A simulated shopper refining results with likes and dislikes (Recommender.recommend).

Target: a held-out catalog item. Round 0 shows the 5 products most similar to it; in each round the
shopper likes the shown results that share the target's taste labels (default articleType and baseColour)
and dislikes the others, then asks again with positive = [target, every liked item] and negative = [every
disliked item]. Rated items never come back, so each round's P@5 (all taste labels right) is over new
products. Strategies: "average" (Recommender.recommend: 2 * mean(liked) - mean(disliked), Qdrant's
average_vector, with its colour re-rank 0.5) at label weights 0 (no labels re-rank, as before it existed)
to LABEL_WEIGHT; "no feedback" is the next page of the first query, the baseline that shows what feedback
adds beyond paging. `--all` adds the strategies that picked "average": "likes only" (dislikes ignored),
Qdrant's "best_score" (each candidate scored by its best liked example, or minus its best disliked one when
that is closer), no colour re-rank. Issue #15 target: +15 points after one round.
Writes bench/results/NAME.json and NAME.png.

What it cannot see: with the default taste the shopper likes exactly the labels the re-rank reads, so it
rewards the re-rank by construction; `--taste gender usage` is a shopper who wants labels the re-rank does
not read (it still reads type and colour), the honest measure of what the feedback itself brings.

    python bench/feedback.py [--index /work/indexes/base] [--queries 300] [--rounds 2] [--seed 0]
                             [--taste articleType baseColour] [--all] [--name feedback]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from common import RESULTS, write_results

from fashionrec.quality.config import TrainConfig
from fashionrec.quality.train import heldout_mask
from fashionrec.search import Recommender
from fashionrec.terms import DEFAULT_LABELS, FEEDBACK_COLOUR, LABEL_WEIGHT

K = 5
POOL = 100  # best_score: candidates per liked example
Strategy = Callable[[Recommender, list[str], list[str]], list[str]]


def average(
    recommender: Recommender, liked: list[str], disliked: list[str], colour: float = 0.0, labels: float = 0.0
) -> list[str]:
    return [m.id for m in recommender.recommend(liked, disliked, K, colour_weight=colour, label_weight=labels)]


def no_feedback(
    recommender: Recommender, liked: list[str], disliked: list[str], colour: float = 0.0, labels: float = 0.0
) -> list[str]:
    """The next page of the first query: what the shopper would see without refining."""
    rated = set(liked + disliked)
    found = recommender.recommend(liked[:1], [], K + len(rated), colour_weight=colour, label_weight=labels)
    return [m.id for m in found if m.id not in rated][:K]


def likes_only(recommender: Recommender, liked: list[str], disliked: list[str]) -> list[str]:
    found = recommender.recommend(liked, [], K + len(disliked), colour_weight=0.0, label_weight=0.0)
    return [m.id for m in found if m.id not in disliked][:K]


def best_score(recommender: Recommender, liked: list[str], disliked: list[str]) -> list[str]:
    """Qdrant's best_score, over the union of each liked example's POOL nearest items."""
    store = recommender.store
    liked_vectors, disliked_vectors = store.vectors(liked), store.vectors(disliked)
    found = {hit.id for hits in store.search(liked_vectors, POOL) for hit in hits}
    candidates = sorted(found - set(liked) - set(disliked))
    vectors = store.vectors(candidates)
    best_liked = (vectors @ liked_vectors.T).max(axis=1)
    best_disliked = (vectors @ disliked_vectors.T).max(axis=1) if len(disliked) else np.full(len(candidates), -np.inf)
    scores = np.where(best_liked > best_disliked, best_liked, -best_disliked)
    return [candidates[i] for i in np.argsort(-scores, kind="stable")[:K]]


STRATEGIES: dict[str, Strategy] = {
    "no feedback (next page), labels 0": partial(no_feedback, colour=FEEDBACK_COLOUR),
    f"no feedback (next page), labels {LABEL_WEIGHT:g}": partial(
        no_feedback, colour=FEEDBACK_COLOUR, labels=LABEL_WEIGHT
    ),
    **{
        f"average, labels {labels:g}": partial(average, colour=FEEDBACK_COLOUR, labels=labels)
        for labels in (0.0, 0.05, 0.1, LABEL_WEIGHT)
    },
}
MORE_STRATEGIES: dict[str, Strategy] = {  # --all: what picked "average" and its colour re-rank
    "no feedback (next page), no colour": no_feedback,
    "average, no colour, labels 0": average,
    "likes only": likes_only,
    "best_score": best_score,
}


def targets(recommender: Recommender, count: int, taste: tuple[str, ...], seed: int) -> list[str]:
    """Held-out items (TrainConfig's split) whose taste labels at least 5 other items share, the same for a seed."""
    items = recommender.items
    config = TrainConfig()
    groups: dict[tuple[str, ...], int] = {}
    for item in items:
        key = tuple(item.metadata.get(column, "") for column in taste)
        groups[key] = groups.get(key, 0) + 1
    heldout = np.flatnonzero(heldout_mask([item.id for item in items], config.holdout, config.seed))
    chosen = []
    for position in np.random.default_rng(seed).permutation(heldout):
        key = tuple(items[position].metadata.get(column, "") for column in taste)
        if all(value.strip() for value in key) and groups[key] > K:
            chosen.append(items[position].id)
        if len(chosen) == count:
            break
    return chosen


def shop(recommender: Recommender, target: str, strategy: Strategy, rounds: int, taste: tuple[str, ...]) -> list[float]:
    """P@5 of each round for one target."""
    wanted = recommender.item(target).metadata
    liked, disliked = [target], []
    shown = [m.id for m in recommender.similar_to_item(target, K)]
    precision = []
    for round_ in range(rounds + 1):
        good = [i for i in shown if all(recommender.item(i).metadata.get(c) == wanted.get(c) for c in taste)]
        precision.append(len(good) / K)
        if round_ < rounds:
            liked += good
            disliked += [i for i in shown if i not in good]
            shown = strategy(recommender, liked, disliked)
    return precision


def plot(results: dict[str, list[float]], title: str, taste: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for name, values in results.items():
        axes.plot(range(len(values)), values, marker="o", label=name)
    axes.set(xlabel="feedback rounds", ylabel=f"P@5 ({' and '.join(taste)})", title=title, ylim=(0, 1))
    axes.set_xticks(range(len(next(iter(results.values())))))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("/work/indexes/base"))
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="which held-out targets")
    parser.add_argument("--taste", nargs="+", default=list(DEFAULT_LABELS), help="the labels the shopper likes")
    parser.add_argument("--all", action="store_true", help="also the strategies that picked the default")
    parser.add_argument("--name", default="feedback", help="results bench/results/NAME.json and NAME.png")
    args = parser.parse_args()

    recommender = Recommender.open(args.index)
    taste = tuple(args.taste)
    chosen = targets(recommender, args.queries, taste, args.seed)
    results: dict[str, list[float]] = {}
    for name, strategy in (STRATEGIES | MORE_STRATEGIES if args.all else STRATEGIES).items():
        started = time.perf_counter()
        precision = np.mean([shop(recommender, t, strategy, args.rounds, taste) for t in chosen], axis=0)
        results[name] = [round(float(p), 4) for p in precision]
        took = time.perf_counter() - started
        gain = (precision[1] - precision[0]) * 100 if args.rounds else 0.0
        rounds = " -> ".join(f"{p:.3f}" for p in precision)
        print(f"{name:38s} P@5 by round {rounds}   ({gain:+.1f} points after one round; {took:.0f} s)", flush=True)
    encoder = str(recommender.info()["encoder"])
    title = f"Simulated shopper, {len(chosen)} held-out targets (seed {args.seed})\n{encoder}"
    plot(results, title, taste, RESULTS / f"{args.name}.png")
    write_results(
        args.name,
        {
            "index": str(args.index),
            "encoder": encoder,
            "targets": len(chosen),
            "seed": args.seed,
            "taste": list(taste),
            "label_columns": list(recommender.labels),
            "k": K,
            "p_at_5_by_round": results,
            "points_after_one_round": {n: round((v[1] - v[0]) * 100, 1) for n, v in results.items() if len(v) > 1},
            "command": f"python bench/feedback.py --index {args.index} --queries {args.queries} --seed {args.seed} "
            f"--taste {' '.join(taste)}{' --all' if args.all else ''} --name {args.name}",
        },
    )


if __name__ == "__main__":
    main()
