"""Milvus Lite at scale, through the real MilvusStore: which ANN index to use, and what it costs.

For each catalog size and index type, in a fresh process (so peak RSS is that run's own): the same
synthetic clustered unit vectors as bench/scale.py (the real dimension, 1280) with one filterable
metadata column of 10 values (a filter keeps ~10% of the items), upserted in batches; then:
- insert_rows_per_s: the upserts (Milvus Lite seals a segment and builds its index every ~25k rows,
  so this already includes most of the index building);
- ready_s: from the first upsert until flushed and searchable (insert + the last segment's index);
- p50/p99 of single queries, recall@10 against exact search (numpy), without and with the filter;
- peak_rss_gb: the process's peak resident memory (Milvus Lite runs inside it).

    python bench/milvus.py [--sizes 10000 100000] [--indexes FLAT IVF_FLAT IVF_SQ8 HNSW]

Each run is written to bench/results/milvus.json as it finishes, next to the runs already there.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, write_results
from scale import DIM, K, clustered, recall

from fashionrec.colour import COLOUR_DIM
from fashionrec.stores import open_store

CLUSTERS = 5000
VALUES = 10  # metadata values: a one-value filter keeps about a tenth of the catalog
BATCH = 5_000
SWEEP = {  # search settings tried per index type (Lite: 128 IVF cells per segment)
    "IVF_FLAT": [{"nprobe": 8}, {"nprobe": 16}, {"nprobe": 32}, {"nprobe": 64}],
    "IVF_SQ8": [{"nprobe": 8}, {"nprobe": 16}, {"nprobe": 32}, {"nprobe": 64}],
    "HNSW": [{"ef": 32}, {"ef": 64}, {"ef": 128}],
}


def percentiles(times: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p99_ms": round(float(np.percentile(times, 99)), 2)}


def one_run(size: int, index: str, queries: int) -> dict[str, object]:
    """Build one collection of `size` items with `index` and measure it (run in its own process)."""
    centres = np.random.default_rng(1).standard_normal((CLUSTERS, DIM), dtype=np.float32)
    data = clustered(size, CLUSTERS, 0, centres)
    asked = clustered(queries, CLUSTERS, 2, centres)
    labels = np.random.default_rng(3).integers(0, VALUES, size)
    colours = np.full((BATCH, COLOUR_DIM), 1 / np.sqrt(COLOUR_DIM), np.float32)
    with tempfile.TemporaryDirectory() as folder:
        store = open_store(f"milvus://bench.db?collection=bench&index={index}", Path(folder), DIM)
        started = time.perf_counter()
        for start in range(0, size, BATCH):
            end = min(size, start + BATCH)
            ids = [str(n) for n in range(start, end)]
            metadata = [{"articleType": f"type{label}"} for label in labels[start:end]]
            store.upsert(ids, data[start:end], colours[: end - start], metadata)
            rate = end / (time.perf_counter() - started)
            print(
                f"  {index} {size}: {end}/{size} rows, {rate:.0f} rows/s, ETA {(size - end) / rate:.0f} s",
                file=sys.stderr,
            )
        insert_s = time.perf_counter() - started
        store._client.flush(store.collection)  # seals the last segment and builds its index
        ready_s = time.perf_counter() - started
        figures: dict[str, object] = {
            "insert_rows_per_s": round(size / insert_s),
            "insert_s": round(insert_s, 1),
            "ready_s": round(ready_s, 1),
        }
        chosen = np.flatnonzero(labels == 0)
        cases = (("unfiltered", None, np.arange(size)), ("filtered", {"articleType": ["type0"]}, chosen))
        for name, filters, pool in cases:
            truth = pool[np.argsort(-(asked @ data[pool].T), axis=1)[:, :K]]
            rows = {}
            for setting in SWEEP.get(index, [{}]):
                store.search_params = setting
                store.search(asked[:3], K, filters)  # warm up
                times, found = [], []
                for query in asked:
                    begun = time.perf_counter()
                    hits = store.search(query, K, filters)[0]
                    times.append((time.perf_counter() - begun) * 1000)
                    found.append([int(hit.id) for hit in hits])
                label = ",".join(f"{key}={value}" for key, value in setting.items()) or "exact"
                rows[label] = {**percentiles(times), "recall@10": round(recall(found, truth), 4)}
                print(f"  {index} {size} {name} {label}: {rows[label]}", file=sys.stderr)
            figures[name] = rows
        store.close()
    figures["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--indexes", nargs="+", default=["FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW"])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per run before it is given up")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "INDEX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(int(args.one[0]), args.one[1], args.queries)))
        return
    previous = RESULTS / "milvus.json"  # runs accumulate: rerun one size or index without losing the others
    runs: dict[str, dict[str, object]] = json.loads(previous.read_text())["runs"] if previous.exists() else {}
    for size in args.sizes:
        for index in args.indexes:
            command = [sys.executable, __file__, "--one", str(size), index, "--queries", str(args.queries)]
            print(f"{index} at {size} items", flush=True)
            try:
                done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                runs[f"{index}@{size}"] = {"size": size, "index": index, "error": f"over {args.timeout:.0f} s"}
                continue
            result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            outcome = json.loads(result[-1][7:]) if result else {"error": f"exit status {done.returncode}"}
            runs[f"{index}@{size}"] = {"size": size, "index": index, **outcome}
            print(runs[f"{index}@{size}"], flush=True)
            write_results("milvus", {"engine": "milvus-lite 3.2.2 (pymilvus 3.0.2)", "dim": DIM, "k": K, "runs": runs})


if __name__ == "__main__":
    main()
