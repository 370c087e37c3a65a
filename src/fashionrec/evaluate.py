"""Retrieval quality: leave-one-out precision of an index against its own metadata labels.

Each query item searches the whole index; its own entry is excluded. A result is relevant when it
shares the query's label (articleType, baseColour, ...), or all labels at once for the combined
measure. Only classes with at least `min_class` items count in the macro averages.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fashionrec.search import RERANK_POOL, Recommender, Snapshot, blend

MIN_CLASS = 20
QUERY_BATCH = 1024
Searchable = Recommender | Snapshot  # an opened index, or vectors not stored anywhere (training)


@dataclass(frozen=True)
class Neighbours:
    """The top-k results of every query: positions into the index and their scores."""

    queries: np.ndarray  # [Q] positions of the query items
    positions: np.ndarray  # [Q, K] positions of their results, self excluded
    scores: np.ndarray  # [Q, K]


def nearest(
    searchable: Searchable, queries: np.ndarray, k: int, progress: bool = True, colour_weight: float = 0.0
) -> Neighbours:
    """The top k of each query item among all items, its own entry left out, ranked as a search ranks them.

    A query with fewer than k results is padded with position -1 and score -inf.
    """
    snapshot = searchable.snapshot if isinstance(searchable, Recommender) else searchable
    store = snapshot.store
    pool = k + 1 if colour_weight == 0 else max(RERANK_POOL, 4 * k) + 1
    rows, scores = [], []
    bar = tqdm(total=len(queries), unit="query", desc="Searching", disable=not progress)
    for start in range(0, len(queries), QUERY_BATCH):
        batch = queries[start : start + QUERY_BATCH]
        ids = [snapshot.items[p].id for p in batch]
        query_colours = store.colours(ids) if colour_weight else None
        for n, hits in enumerate(store.search(store.vectors(ids), pool)):
            hits = [hit for hit in snapshot.known(hits) if hit.id != ids[n]]
            found = np.array([snapshot.positions[hit.id] for hit in hits], dtype=np.int64)
            found_scores = np.array([hit.score for hit in hits], dtype=np.float32)
            if query_colours is not None and hits:
                colours = store.colours([hit.id for hit in hits])
                found_scores = blend(found_scores, colours, query_colours[n], colour_weight)
            order = np.argsort(-found_scores, kind="stable")[:k]
            missing = k - len(order)
            rows.append(np.concatenate([found[order], np.full(missing, -1, np.int64)]))
            scores.append(np.concatenate([found_scores[order], np.full(missing, -np.inf, np.float32)]))
        bar.update(len(batch))
    bar.close()
    return Neighbours(queries, np.stack(rows), np.stack(scores))


def label_values(recommender: Searchable, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Each item's value of each label column ("" if missing), plus the combined label when there are several."""
    missing = [c for c in columns if c not in recommender.metadata.columns]
    if missing:
        raise ValueError(f"unknown label column(s) {', '.join(missing)}; columns are {', '.join(recommender.metadata)}")
    found = {c: recommender.metadata[c].fillna("").to_numpy(dtype=object) for c in columns}
    if len(columns) > 1:
        found["+".join(columns)] = np.array(["|".join(v) for v in zip(*found.values(), strict=True)], dtype=object)
    return found


def _average_precision(relevant: np.ndarray, total_relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@k per query: mean of precision at each relevant rank, over min(k, relevant items)."""
    hits = relevant[:, :k]
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    denominator = np.minimum(total_relevant, k)
    return np.where(denominator > 0, (precision_at * hits).sum(axis=1) / np.maximum(denominator, 1), 0.0)


def score(
    recommender: Searchable,
    neighbours: Neighbours,
    label_columns: Sequence[str],
    ks: Sequence[int],
    min_class: int = MIN_CLASS,
) -> dict[str, object]:
    """P@k, mAP@k and macro P@k per label (and combined), with per-class figures and confusions."""
    results: dict[str, object] = {}
    for name, labels in label_values(recommender, label_columns).items():
        sizes = Counter(labels)
        query_labels = labels[neighbours.queries]
        relevant = labels[neighbours.positions] == query_labels[:, None]
        total_relevant = np.array([sizes[label] - 1 for label in query_labels])
        counted = np.array([sizes[label] >= min_class for label in query_labels])
        per_class_p5 = {
            str(label): float(relevant[query_labels == label, :5].mean())
            for label in sorted(set(query_labels[counted]))
        }
        confusions = Counter(
            (str(q), str(r))
            for q, row, ok in zip(query_labels, labels[neighbours.positions[:, :5]], relevant[:, :5], strict=True)
            for r, hit in zip(row, ok, strict=True)
            if not hit
        )
        figures: dict[str, object] = {}
        for k in ks:
            precision = relevant[:, :k].mean(axis=1)
            by_class = [precision[(query_labels == c)].mean() for c in set(query_labels[counted])]
            figures[f"P@{k}"] = float(precision.mean())
            figures[f"mAP@{k}"] = float(_average_precision(relevant, total_relevant, k).mean())
            figures[f"macro_P@{k}"] = float(np.mean(by_class)) if by_class else None
        results[name] = {
            **figures,
            "queries": int(len(query_labels)),
            "classes_counted": len(per_class_p5),
            "queries_in_small_classes": int((~counted).sum()),
            "small_classes": sorted(str(label) for label, n in sizes.items() if n < min_class),
            "per_class_P@5": per_class_p5,
            "top_confusions": [{"query": q, "result": r, "count": n} for (q, r), n in confusions.most_common(15)],
        }
    return results


def evaluate(
    recommender: Recommender,
    labels: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
    queries: Sequence[str] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    samples: int = 8,
    colour_weight: float = 0.0,
) -> dict[str, object]:
    """Measure the index; with `out`, also write report.json and the pictures a person reads."""
    ks = sorted(set(ks))
    if queries is None:
        positions = np.arange(len(recommender.items))
    else:
        unknown = [q for q in queries if q not in recommender.positions]
        if unknown:
            raise ValueError(f"{len(unknown)} query id(s) not in the index, e.g. {unknown[0]!r}")
        positions = np.array([recommender.positions[q] for q in queries], dtype=np.int64)
    if len(positions) == 0 or len(recommender.items) < 2:
        raise ValueError("evaluation needs at least one query and two items in the index")
    neighbours = nearest(recommender, positions, max(ks), progress, colour_weight)
    report = {
        "index": str(recommender.records.directory),
        "encoder": recommender.info()["encoder"],
        "colour_weight": colour_weight,
        "items": len(recommender.items),
        "ks": ks,
        "min_class": MIN_CLASS,
        "labels": score(recommender, neighbours, labels, ks),
    }
    if out is not None:
        from fashionrec import eval_plots

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
        eval_plots.write_all(recommender, neighbours, report, labels, out, samples)
    return report
