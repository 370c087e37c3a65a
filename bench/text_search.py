"""Search by words, measured with the protocol of Marqo's KAGL leaderboard, on items training never saw.

KAGL (Marqo's public fashion benchmark on this same Kaggle catalog): the query is a product's
productDisplayName, the target its image; R@1 and R@10. Here the queries are the held-out items of
`fashionrec train` (train.heldout_mask: their names and images were never trained on), and the
gallery is (a) the held-out items' images only, or (b) the whole catalog's images. Three rankings:
the text bridge alone (no metadata match: the look only), the catalog's words alone (BM25 over
names and metadata: the query is the target's own name, so it finds every product of that name),
and the two fused as Recommender.similar_to_text does (search.fuse: a blend of the scaled scores; its
words weight is chosen on the validation items, which are neither trained on nor tested, where
reciprocal rank fusion is measured too).

Many products share a name ("Nike Men Black T-shirt"): exact R@1 is then partly luck, so every
figure is also given with "any product of the identical name counts".

Plus metadata-word queries, as a shopper types them ("red tshirts for men"): for the most common
(gender, articleType, baseColour) triples, the share of the 5 first results of that articleType,
of that baseColour, and of both (P@5).

    fashionrec train-text /work/indexes/full --out /tmp/bridge-full --epochs 30
    fashionrec train-text /work/indexes/full --out /tmp/bridge-full-v --validation 0.1
    cd bench && OMP_NUM_THREADS=1 python text_search.py --index /work/indexes/full --bridge /tmp/bridge-full \
        --tuning-bridge /tmp/bridge-full-v
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from common import write_results
from tqdm import tqdm

from fashionrec.bridge import TextBridge
from fashionrec.index import IndexStore
from fashionrec.quality.config import BridgeConfig
from fashionrec.quality.train import _read_all
from fashionrec.quality.train_text import split
from fashionrec.search import TEXT_POOL, WORDS_WEIGHT, Recommender, fuse, top_scores
from fashionrec.text import NAME, TextIndex

KS = (1, 10)
MODES = ("bridge", "words", "fused")
WEIGHTS = (0.35, 0.5, 0.65, 0.8, 0.9, 0.95)  # words weights of search.fuse tried on the validation items
RRF_CONSTANT = 60  # reciprocal rank fusion (Cormack et al. 2009), measured on the validation items for comparison
META_QUERIES = 60  # most common (gender, articleType, baseColour) triples asked in words
LATENCY_QUERIES = 300
Pairs = list[tuple[float, int]]  # (score, position) of a text search's candidates


def key(name: str) -> str:
    return " ".join(name.lower().split())


def ranked(pairs: Pairs, ids: list[str], k: int) -> list[int]:
    """The first k positions as the Recommender orders them: by score (5 decimals), ties by id."""
    return [p for _, p in sorted(pairs, key=lambda pair: (-round(pair[0], 5), ids[pair[1]]))[:k]]


def bridge_pools(queries: np.ndarray, vectors: np.ndarray, gallery: np.ndarray) -> list[Pairs]:
    """The bridge's TEXT_POOL best (score, position) pairs among the gallery, per query vector."""
    pools = []
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ vectors[gallery].T
        best = np.argpartition(-scores, TEXT_POOL - 1, axis=1)[:, :TEXT_POOL]
        for row, columns in enumerate(best):
            pools.append([(float(scores[row, c]), int(gallery[c])) for c in columns])
    return pools


def reciprocal_rank_fusion(by_words: Pairs, by_look: Pairs) -> Pairs:
    """The other way to fuse, for comparison: the sum over both rankings of 1 / (RRF_CONSTANT + rank)."""
    totals: dict[int, float] = {}
    for ranking in (by_words, by_look):
        for rank, (_, position) in enumerate(sorted(ranking, reverse=True), start=1):
            totals[position] = totals.get(position, 0.0) + 1.0 / (RRF_CONSTANT + rank)
    return [(total, position) for position, total in totals.items()]


def top_k(
    text_index: TextIndex,
    texts: list[str],
    embedded: np.ndarray,
    vectors: np.ndarray,
    gallery: np.ndarray,
    ids: list[str],
    fusions: dict[str, Callable[[Pairs, Pairs], Pairs]],
    desc: str,
) -> dict[str, list[list[int]]]:
    """Per mode (bridge, words, and each named fusion): the first max(KS) positions for each text."""
    found: dict[str, list[list[int]]] = {"bridge": [], "words": [], **{name: [] for name in fusions}}
    pools = bridge_pools(embedded, vectors, gallery)
    for text, by_look in tqdm(list(zip(texts, pools, strict=True)), desc=desc, unit="query", mininterval=5):
        by_words = top_scores(text_index.scores(text), gallery, TEXT_POOL)
        found["bridge"].append(ranked(by_look, ids, max(KS)))
        found["words"].append(ranked(by_words, ids, max(KS)))
        for name, fusion in fusions.items():
            found[name].append(ranked(fusion(by_words, by_look), ids, max(KS)))
    return found


def recall(found: list[list[int]], targets: np.ndarray, names: list[str]) -> dict[str, float]:
    """Exact R@k (the target itself) and R@k where any product of the target's identical name counts."""
    figures = {}
    for k in KS:
        figures[f"R@{k}"] = round(float(np.mean([t in f[:k] for f, t in zip(found, targets, strict=True)])), 4)
        same_name = [key(names[t]) in {key(names[p]) for p in f[:k]} for f, t in zip(found, targets, strict=True)]
        figures[f"R@{k}_same_name"] = round(float(np.mean(same_name)), 4)
    return figures


def kagl(
    text_index: TextIndex,
    bridge: TextBridge,
    vectors: np.ndarray,
    rows: np.ndarray,
    galleries: dict[str, np.ndarray],
    ids: list[str],
    names: list[str],
    fusions: dict[str, Callable[[Pairs, Pairs], Pairs]],
) -> dict[str, dict[str, dict[str, float]]]:
    """KAGL text-to-image figures of the named `rows` against each gallery, per mode."""
    queries = np.array([r for r in rows if names[r]])
    texts = [names[r] for r in queries]
    embedded = bridge.embed(texts)
    results = {}
    for gallery_name, gallery in galleries.items():
        found = top_k(text_index, texts, embedded, vectors, gallery, ids, fusions, f"KAGL, {gallery_name}")
        results[gallery_name] = {mode: recall(lists, queries, names) for mode, lists in found.items()}
        results[gallery_name]["queries"] = len(queries)  # type: ignore[assignment]
        results[gallery_name]["gallery"] = len(gallery)  # type: ignore[assignment]
    return results


def metadata_queries(metadata: list[dict[str, str]], rows: np.ndarray) -> list[tuple[str, tuple[str, str, str]]]:
    """The META_QUERIES most common (gender, articleType, baseColour) triples as shoppers' words."""
    triples = Counter((metadata[r]["gender"], metadata[r]["articleType"], metadata[r]["baseColour"]) for r in rows)
    return [(f"{colour} {kind} for {gender}".lower(), (gender, kind, colour)) for (gender, kind, colour), _ in
            triples.most_common(META_QUERIES)]  # fmt: skip


def metadata_precision(
    text_index: TextIndex,
    bridge: TextBridge,
    vectors: np.ndarray,
    metadata: list[dict[str, str]],
    gallery: np.ndarray,
    ids: list[str],
    weight: float,
) -> dict[str, dict[str, float]]:
    """P@5 of articleType, baseColour and both, for metadata-word queries, per mode."""
    asked = metadata_queries(metadata, gallery)
    texts = [text for text, _ in asked]
    fused = {"fused": partial(fuse, words_weight=weight)}
    found = top_k(text_index, texts, bridge.embed(texts), vectors, gallery, ids, fused, "metadata words")
    figures = {}
    for mode, lists in found.items():
        firsts = [[(metadata[p]["articleType"], metadata[p]["baseColour"]) for p in f[:5]] for f in lists]
        wanted = [triple[1:] for _, triple in asked]
        figures[mode] = {
            name: round(
                float(np.mean([[test(got, want) for got in five] for five, want in zip(firsts, wanted, strict=True)])),
                4,
            )
            for name, test in (
                ("articleType_P@5", lambda got, want: got[0] == want[0]),
                ("baseColour_P@5", lambda got, want: got[1] == want[1]),
                ("both_P@5", lambda got, want: got == want),
            )
        }
    figures["queries"] = len(asked)  # type: ignore[assignment]
    figures["examples"] = texts[:5]  # type: ignore[assignment]
    return figures


def latency(index: Path, bridge_dir: Path, texts: list[str]) -> dict[str, float]:
    """Median ms of embedding one text with the bridge, and of a whole fused text search (k=10)."""
    recommender = Recommender.open(index, text_model=bridge_dir)
    recommender.similar_to_text(texts[0])  # builds BM25 and loads the bridge
    bridge = recommender.bridge
    assert bridge is not None
    embed, search, words = [], [], []
    for text in texts:
        started = time.perf_counter()
        bridge.embed([text])
        embed.append(time.perf_counter() - started)
        started = time.perf_counter()
        recommender.similar_to_text(text, k=10)
        search.append(time.perf_counter() - started)
        started = time.perf_counter()
        recommender.similar_to_text(text, k=10, mode="words")
        words.append(time.perf_counter() - started)
    median = {name: statistics.median(times) * 1000 for name, times in
              (("embed", embed), ("fused", search), ("words", words))}  # fmt: skip
    return {
        "bridge_embed_ms": round(median["embed"], 3),
        "fused_search_ms": round(median["fused"], 3),
        "words_search_ms": round(median["words"], 3),
        "fused_over_words": round(median["fused"] / median["words"], 2),
        "queries": len(texts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("/work/indexes/full"))
    parser.add_argument("--bridge", type=Path, required=True, help="The bridge measured (made by train-text)")
    parser.add_argument(
        "--tuning-bridge",
        type=Path,
        help="A bridge made with train-text --validation 0.1, to choose the fusion on its validation items "
        "(default: --bridge, which must then have validation items)",
    )
    parser.add_argument("--name", default="text_search", help="bench/results/NAME.json")
    args = parser.parse_args()

    store = IndexStore.open(args.index)
    items, vectors, _ = _read_all(store)
    bridge = TextBridge.load(args.bridge, store.manifest["encoder"]["id"])  # type: ignore[index]
    tuning_dir = args.tuning_bridge or args.bridge
    tuning = TextBridge.load(tuning_dir, bridge.encoder_id)
    store.close()
    ids = [item.id for item in items]
    metadata = [item.metadata for item in items]
    names = [m.get(NAME, "") for m in metadata]
    settings = tuning.manifest["config"]
    config = BridgeConfig(seed=settings["seed"], holdout=settings["holdout"], validation=settings["validation"])
    train_rows, validation_rows, heldout_rows = split(ids, config)
    if not len(validation_rows):
        raise SystemExit(f"{tuning_dir}: trained without validation items; train one with --validation 0.1")
    if (bridge.manifest["config"]["seed"], bridge.manifest["config"]["holdout"]) != (config.seed, config.holdout):
        raise SystemExit(f"{args.bridge} and {tuning_dir} hold out other items (seed, holdout)")
    started = time.perf_counter()
    text_index = TextIndex.of(metadata)
    build_seconds = time.perf_counter() - started
    everything = np.arange(len(items))

    print(f"Validation ({len(validation_rows)} items): choosing how to fuse")
    candidates = {f"blend@{w}": partial(fuse, words_weight=w) for w in WEIGHTS}
    candidates[f"rrf@{RRF_CONSTANT}"] = reciprocal_rank_fusion
    validation = kagl(text_index, tuning, vectors, validation_rows, {"catalog": everything}, ids, names, candidates)
    validation = validation["catalog"]
    weight = max(WEIGHTS, key=lambda w: (validation[f"blend@{w}"]["R@1"], validation[f"blend@{w}"]["R@10"]))
    for name in ("bridge", "words", *candidates):
        print(f"  {name:10s} {validation[name]}")
    print(f"  chosen: words weight {weight} (search.WORDS_WEIGHT is {WORDS_WEIGHT})")

    galleries = {"heldout": heldout_rows, "catalog": everything}
    fused = {"fused": partial(fuse, words_weight=weight)}
    test = kagl(text_index, bridge, vectors, heldout_rows, galleries, ids, names, fused)

    heldout_names = Counter(key(names[r]) for r in heldout_rows if names[r])
    catalog_names = Counter(key(n) for n in names if n)
    shared = {
        "heldout_names": sum(heldout_names.values()),
        "heldout_names_shared_within_heldout": sum(n for n in heldout_names.values() if n > 1),
        "heldout_names_shared_in_catalog": sum(
            1 for r in heldout_rows if names[r] and catalog_names[key(names[r])] > 1
        ),
    }
    precision = {
        "catalog": metadata_precision(text_index, bridge, vectors, metadata, everything, ids, weight),
        "heldout": metadata_precision(text_index, bridge, vectors, metadata, heldout_rows, ids, weight),
    }
    step = max(1, len(heldout_rows) // LATENCY_QUERIES)
    timing = latency(args.index, args.bridge, [names[r] for r in heldout_rows[::step] if names[r]][:LATENCY_QUERIES])
    timing["bm25_build_seconds"] = round(build_seconds, 2)

    marqo = {"Marqo-FashionSigLIP": {"R@1": 0.179, "R@10": 0.489}, "Marqo-FashionCLIP": {"R@1": 0.159, "R@10": 0.446}}
    for gallery, figures in test.items():
        print(f"\nKAGL text-to-image, held-out names vs {gallery} images ({figures['gallery']}):")
        for mode in MODES:
            f = figures[mode]
            print(
                f"  {mode:7s} R@1 {f['R@1']:.3f}  R@10 {f['R@10']:.3f}   same name: R@1 {f['R@1_same_name']:.3f}  "
                f"R@10 {f['R@10_same_name']:.3f}   R@1 / Marqo-FashionSigLIP's 0.179: {f['R@1'] / 0.179:.2f}x"
            )
    print(f"\nShared names: {shared}")
    for gallery, figures in precision.items():
        print(f"Metadata-word queries ({figures['queries']}, e.g. {figures['examples'][:2]}) on {gallery}:")
        for mode in MODES:
            print(f"  {mode:7s} {figures[mode]}")
    print(f"Latency: {timing}")
    write_results(
        args.name,
        {
            "command": f"python bench/text_search.py --index {args.index} --bridge {args.bridge} "
            f"--tuning-bridge {tuning_dir}",
            "index": str(args.index),
            "encoder": bridge.encoder_id,
            "bridge": {k: bridge.manifest[k] for k in ("config", "split", "figures", "training_seconds")},
            "tuning_bridge": {k: tuning.manifest[k] for k in ("config", "split", "figures", "training_seconds")},
            "split": {"train": len(train_rows), "validation": len(validation_rows), "heldout": len(heldout_rows)},
            "fusion": {"chosen_words_weight": weight, "validation_catalog": validation},
            "kagl": test,
            "marqo_published_kagl_text_to_image": marqo,
            "shared_names": shared,
            "metadata_words_P@5": precision,
            "latency": timing,
        },
    )


if __name__ == "__main__":
    main()
