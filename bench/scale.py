"""Scale: exact vs approximate search on synthetic catalogs of up to 1M vectors of the real dimension.

Clustered unit vectors (like product embeddings: many near-duplicates around a few thousand
styles). For each structure: build time, single-query p50/p99 and recall@10 against exact search.
Also the exact-search latency as the catalog grows, which sets stores.base.ANN_THRESHOLD.

    python bench/scale.py [--items 1000000] [--hnsw-items 200000]
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
from common import write_results

from fashionrec.stores.faiss_index import FaissIndex

DIM = 1280
K = 10


def clustered(count: int, clusters: int, seed: int, centres: np.ndarray | None = None) -> np.ndarray:
    """Unit vectors scattered around `clusters` random centres, generated in chunks."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = np.random.default_rng(1).standard_normal((clusters, DIM), dtype=np.float32)
    out = np.empty((count, DIM), np.float32)
    for start in range(0, count, 50_000):
        n = min(50_000, count - start)
        chunk = centres[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, DIM), dtype=np.float32)
        out[start : start + n] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def latency(search, queries: np.ndarray) -> tuple[dict[str, float], np.ndarray]:  # noqa: ANN001
    search(queries[:3])
    times, found = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(search(query[None])[1][0])
        times.append((time.perf_counter() - started) * 1000)
    figures = {"p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3)}
    return figures, np.stack(found)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(t[:K])) / K for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--clusters", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--hnsw-items", type=int, default=200_000)
    parser.add_argument("--precisions", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)  # single queries: what a server answering one request at a time sees
    centres = np.random.default_rng(1).standard_normal((args.clusters, DIM), dtype=np.float32)
    data = clustered(args.items, args.clusters, 0, centres)
    queries = clustered(args.queries, args.clusters, 2, centres)
    figures: dict[str, object] = {"items": args.items, "dim": DIM, "clusters": args.clusters, "k": K}

    sweep = {}
    for size in (10_000, 20_000, 50_000, 100_000, 200_000, args.items):
        exact = FaissIndex.build(DIM, size, lambda n=size: [data[:n]], "exact")
        sweep[size], _ = latency(lambda q, e=exact: e.search(q, K), queries[:50])
        print("exact", size, sweep[size], flush=True)
    figures["exact_latency_by_size"] = sweep
    faiss.omp_set_num_threads(2)
    truth = exact.search(queries, K)[1]
    faiss.omp_set_num_threads(1)
    figures["exact"] = {"build_s": None, **sweep[args.items], "recall@10": 1.0}
    del exact

    for precision in args.precisions:
        faiss.omp_set_num_threads(2)
        started = time.perf_counter()
        ivf = FaissIndex.build(DIM, args.items, lambda: [data], "ivf", precision)
        build_s = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        rows = {}
        for nprobe in (16, 32, 48, 64, 96):
            ivf.index.nprobe = nprobe
            timing, found = latency(lambda q, i=ivf: i.search(q, K), queries)
            rows[nprobe] = {**timing, "recall@10": round(recall(found, truth), 4)}
            print("ivf", precision, nprobe, rows[nprobe], flush=True)
        figures[f"ivf_{precision}"] = {"build_s": round(build_s, 1), "cells": ivf.index.nlist, "by_nprobe": rows}
        del ivf

    hnsw_data = data[: args.hnsw_items]
    faiss.omp_set_num_threads(2)
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(hnsw_data)
    build_s = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(hnsw_data)
    sub_truth = flat.search(queries, K)[1]
    rows = {}
    for ef in (64, 128):
        hnsw.hnsw.efSearch = ef
        timing, found = latency(lambda q: hnsw.search(q, K), queries)
        rows[ef] = {**timing, "recall@10": round(recall(found, sub_truth), 4)}
        print("hnsw", ef, rows[ef], flush=True)
    figures["hnsw_subset"] = {
        "items": args.hnsw_items,
        "build_s": round(build_s, 1),
        "build_s_extrapolated_to_items": round(build_s * args.items / args.hnsw_items, 1),
        "by_ef_search": rows,
    }
    write_results("scale", figures)


if __name__ == "__main__":
    main()
