"""Scale: exact vs approximate search on synthetic catalogs of up to 1M vectors of the real dimension.

Clustered unit vectors (like product embeddings: many near-duplicates around a few thousand
styles). For each structure: build time, single-query p50/p99 and recall@10 against exact search.
Also the exact-search latency as the catalog grows, which sets stores.base.ANN_THRESHOLD.

    python bench/scale.py [--items 1000000] [--hnsw-items 200000]

Beyond what float32 or float16 vectors in RAM allow (10M x 1280-d is 51 GB, or 26 GB in float16), `--pq-items`
measures IVF-PQ instead (bench/results/scale_ivfpq.json): 64-byte PQ codes in RAM, and the float16 vectors in
a file on disk (memory-mapped) from which the best `rerank` PQ candidates are scored exactly. Vectors are
generated and indexed in chunks, and the ground truth of the queries is computed by streaming brute force.

    python bench/scale.py --pq-items 1000000 3000000

`--reduce 256` puts a PCA to 256 dimensions in front of the IVF-PQ (the issue's "reduced dimension"): cells
are assigned with a flat quantizer and BLAS, 5x cheaper per vector than at 1280-d, which is what makes 10M
buildable on 2 cores in well under an hour. The re-rank still scores the full 1280-d float16 vectors, so
recall@10 is measured against exact search in the full space. Results go under a `-pca256` key.

    python bench/scale.py --pq-items 10000000 --reduce 256 --cells 4096 --reranks 200 1000 2000 4000

The generator puts items/5000 near-duplicates around each style (200 at 1M, 2,000 at 10M) with isotropic
noise, whose order no compressed code resolves: the true 10 are found only when the re-rank takes in the
whole style, so 10M needs re-ranks in the thousands (`--reranks`).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from common import RESULTS, write_results

from fashionrec.stores.faiss_index import FaissIndex

DIM = 1280
K = 10


CHUNK = 50_000
PQ_BYTES = 64  # bytes of PQ code per vector (64 sub-quantizers of 20 dimensions, 8 bits each)
TRAIN_PER_CELL = 40  # vectors per coarse cell that train the cells and the PQ codebooks (FAISS asks for >= 39)
RERANKS = (100, 200, 500, 1000)  # PQ candidates scored exactly: more look-alikes per style need more


def clustered_chunks(count: int, clusters: int, seed: int, centres: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Unit vectors scattered around `clusters` random centres, CHUNK at a time (bounded memory)."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = np.random.default_rng(1).standard_normal((clusters, DIM), dtype=np.float32)
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        chunk = centres[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, DIM), dtype=np.float32)
        yield chunk / np.linalg.norm(chunk, axis=1, keepdims=True)


def clustered(count: int, clusters: int, seed: int, centres: np.ndarray | None = None) -> np.ndarray:
    """All of `clustered_chunks` in one array."""
    out = np.empty((count, DIM), np.float32)
    for start, chunk in zip(range(0, count, CHUNK), clustered_chunks(count, clusters, seed, centres), strict=True):
        out[start : start + len(chunk)] = chunk
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


def progress(done: int, total: int, started: float, what: str) -> None:
    rate = done / max(time.perf_counter() - started, 1e-9)
    print(f"  {what}: {done}/{total}, {rate:.0f}/s, ETA {(total - done) / rate:.0f} s", flush=True)


@dataclass(frozen=True)
class PQLayout:
    """How the IVF-PQ is laid out: cells (None: about 2 sqrt(N)), code bytes, and an optional PCA in front."""

    cells: int | None = None
    pq_bytes: int = PQ_BYTES
    reduce: int | None = None  # PCA to this many dimensions before the IVF-PQ; the re-rank stays full-size

    def build(self, items: int) -> tuple[faiss.Index, faiss.IndexIVF, faiss.Index]:
        """The index to train and add to, its IVF part (nprobe) and its coarse quantizer."""
        cells = self.cells or 1 << round(np.log2(2 * np.sqrt(items)))  # a power of two: k-means in minutes
        if self.reduce is None:
            quantizer = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)  # assigns 10M vectors in minutes
            quantizer.hnsw.efSearch = 128  # the default 16 misplaces vectors and misses cells: recall 0.93 at 200k
            ivf = faiss.IndexIVFPQ(quantizer, DIM, cells, self.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
            index = ivf
        else:  # at the reduced size a flat quantizer assigns a chunk as one BLAS product
            quantizer = faiss.IndexFlatIP(self.reduce)
            ivf = faiss.IndexIVFPQ(quantizer, self.reduce, cells, self.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
            index = faiss.IndexPreTransform(faiss.PCAMatrix(DIM, self.reduce), ivf)
        ivf.cp.niter = ivf.pq.cp.niter = 10
        return index, ivf, quantizer


def ivfpq_run(
    items: int,
    clusters: int,
    queries: np.ndarray,
    centres: np.ndarray,
    folder: Path,
    layout: PQLayout,
    reranks: tuple[int, ...],
) -> dict[str, object]:
    """IVF-PQ over `items` generated vectors, float16 originals in a memory-mapped file for the exact re-rank."""
    faiss.omp_set_num_threads(2)
    index, ivf, quantizer = layout.build(items)
    cells = ivf.nlist
    originals = np.lib.format.open_memmap(folder / f"vectors-{items}.npy", "w+", np.float16, (items, DIM))
    truth_scores = np.full((len(queries), K), -np.inf, np.float32)
    truth = np.zeros((len(queries), K), np.int64)
    started = time.perf_counter()
    train_s = add_s = 0.0
    pending: list[np.ndarray] = []
    for start, chunk in zip(range(0, items, CHUNK), clustered_chunks(items, clusters, 0, centres), strict=True):
        originals[start : start + len(chunk)] = chunk
        scores = queries @ chunk.T  # streaming brute force: merge this chunk's best into the running top-K
        best = np.argpartition(-scores, min(K, len(chunk)) - 1, axis=1)[:, :K]
        merged_scores = np.hstack([truth_scores, np.take_along_axis(scores, best, axis=1)])
        merged = np.hstack([truth, best + start])
        keep = np.argsort(-merged_scores, axis=1)[:, :K]
        truth_scores, truth = np.take_along_axis(merged_scores, keep, axis=1), np.take_along_axis(merged, keep, axis=1)
        if not index.is_trained:
            pending.append(chunk)
            if sum(len(p) for p in pending) < min(TRAIN_PER_CELL * cells, items):
                continue
            sample, pending = np.concatenate(pending), []
            begun = time.perf_counter()
            index.train(sample)
            train_s = time.perf_counter() - begun
            chunk, start = sample, start + len(chunk) - len(sample)  # the sample's items are added now
        begun = time.perf_counter()
        index.add_with_ids(chunk, np.arange(start, start + len(chunk), dtype=np.int64))
        add_s += time.perf_counter() - begun
        progress(start + len(chunk), items, started, f"IVF-PQ {items}")
    originals.flush()
    build_s = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    rows = {}
    for nprobe in (16, 32, 64):
        for rerank in reranks:
            ivf.nprobe = nprobe
            if isinstance(quantizer, faiss.IndexHNSWFlat):
                quantizer.hnsw.efSearch = max(128, 2 * nprobe)

            def search(query: np.ndarray, rerank: int = rerank) -> tuple[None, np.ndarray]:
                candidates = index.search(query, rerank)[1][0]
                candidates = np.sort(candidates[candidates >= 0])  # in file order: fewer disk seeks
                exact = originals[candidates].astype(np.float32) @ query[0]
                return None, candidates[np.argsort(-exact)[:K]][None]

            timing, found = latency(search, queries)
            rows[f"nprobe={nprobe},rerank={rerank}"] = {**timing, "recall@10": round(recall(found, truth), 4)}
            print(f"IVF-PQ {items} nprobe {nprobe} rerank {rerank}: {rows[f'nprobe={nprobe},rerank={rerank}']}")
    ram = faiss.serialize_index(index).nbytes
    return {
        "items": items,
        "cells": cells,
        "pq_bytes": layout.pq_bytes,
        "reduced_dim": layout.reduce,
        "build_s": round(build_s, 1),
        "train_s": round(train_s, 1),
        "add_s": round(add_s, 1),
        "index_ram_gb": round(ram / 2**30, 3),
        "rerank_file_gb": round(items * DIM * 2 / 2**30, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "by_setting": rows,
    }


def ivfpq_main(
    sizes: list[int], clusters: int, queries: int, layout: PQLayout, reranks: tuple[int, ...], scratch: Path | None
) -> None:
    """IVF-PQ with a float16 re-rank from disk at each size (the structure for catalogs beyond RAM)."""
    centres = np.random.default_rng(1).standard_normal((clusters, DIM), dtype=np.float32)
    asked = clustered(queries, clusters, 2, centres)
    previous = RESULTS / "scale_ivfpq.json"  # runs accumulate, keyed by size and layout
    runs = json.loads(previous.read_text())["runs"] if previous.exists() else {}
    suffix = f"-pca{layout.reduce}" if layout.reduce else ""
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        for items in sizes:
            runs[f"{items}{suffix}"] = ivfpq_run(items, clusters, asked, centres, Path(folder), layout, reranks)
            write_results("scale_ivfpq", {"dim": DIM, "clusters": clusters, "k": K, "queries": queries, "runs": runs})
            (Path(folder) / f"vectors-{items}.npy").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pq-items", type=int, nargs="+", help="run only IVF-PQ + float16 re-rank at these sizes")
    parser.add_argument("--reduce", type=int, help="IVF-PQ: a PCA to this many dimensions in front")
    parser.add_argument("--pq-bytes", type=int, default=PQ_BYTES, help="IVF-PQ: bytes of code per vector")
    parser.add_argument("--cells", type=int, help="IVF-PQ: coarse cells (default about 2 sqrt(N))")
    parser.add_argument("--scratch", type=Path, help="IVF-PQ: where the re-rank file goes (25.6 GB at 10M)")
    parser.add_argument(
        "--reranks", type=int, nargs="+", default=RERANKS, help="IVF-PQ: candidates scored exactly (one row each)"
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--clusters", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--hnsw-items", type=int, default=200_000)
    parser.add_argument("--precisions", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    args = parser.parse_args()
    if args.pq_items:
        layout = PQLayout(args.cells, args.pq_bytes, args.reduce)
        ivfpq_main(args.pq_items, args.clusters, args.queries, layout, tuple(args.reranks), args.scratch)
        return
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
