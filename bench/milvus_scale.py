"""Milvus at scale, through the real MilvusStore: which ANN index to use, and what it costs.

Two engines: `--engine lite` (embedded Milvus Lite, in this process) and `--engine server` (a Milvus
2.3.5 standalone server started for each run from the `milvus` package, fashionrec.stores.milvus_server,
its binaries and data in a temp folder under --scratch). For each catalog size and index type, in a
fresh process (so peak memory is that run's own): the same synthetic clustered unit vectors as
bench/scale.py (the real dimension, 1280) with one filterable metadata column of 10 values (a filter keeps
~10% of the items), upserted in batches; then:
- insert_rows_per_s: the upserts (Milvus Lite seals a segment and builds its index every ~25k rows,
  so this already includes most of the index building);
- ready_s: from the first upsert until flushed and searchable with every row indexed;
- p50/p99 of single queries, recall@10 against exact search (numpy), without and with the filter (a
  server: read with Bounded consistency; `strong` repeats a few with Strong, the store's default);
- peak_rss_gb: the peak resident memory of this process (Milvus Lite runs inside it) and, for a server,
  server_peak_rss_gb of the server process.

`--metadata dynamic` keeps the metadata column in Milvus's dynamic JSON field instead of a declared
VARCHAR field (what the store did before): the store declares the columns of its first upsert, so the
benchmark first upserts (and deletes) one row with no metadata. It shows what a filter on JSON costs.

    python bench/milvus_scale.py [--engine lite|server] [--sizes 10000 100000] [--indexes FLAT IVF_FLAT IVF_SQ8 HNSW]

`--no-compaction` starts the server with automatic compaction off: at 1M rows (about 10 sealed segments) it
kept merging segments and indexing the merged ones again for over 20 minutes after every row was indexed, so
"ready" never came; without it the collection stays as built (runs are keyed ".../no-compaction").

Each run is written to bench/results/milvus.json (Lite) or milvus_server.json as it finishes, next to the
runs already there. It cannot see a cluster (several query nodes, network hops), disk-bound collections
or concurrent queries: one client, one query at a time, everything on this machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from common import RESULTS, write_results
from scale import DIM, K, clustered, recall

from fashionrec.colour import COLOUR_DIM
from fashionrec.stores import open_store
from fashionrec.stores.milvus import FILTER_WIDENING, INDEXES, MilvusStore
from fashionrec.stores.milvus_server import local_server

CLUSTERS = 5000
VALUES = 10  # metadata values: a one-value filter keeps about a tenth of the catalog
BATCH = 5_000
SWEEP = {  # search settings tried per index type (Lite: 128 IVF cells per segment; a server: nlist 1024)
    "IVF_FLAT": [{"nprobe": 8}, {"nprobe": 16}, {"nprobe": 32}, {"nprobe": 64}, {"nprobe": 128}, {"nprobe": 256}],
    "IVF_SQ8": [{"nprobe": 8}, {"nprobe": 16}, {"nprobe": 32}, {"nprobe": 64}],
    "HNSW": [{"ef": 32}, {"ef": 64}, {"ef": 128}, {"ef": 256}],
}
SERVER_ENGINE = "milvus 2.3.5 standalone server (pymilvus 3.0.2)"
STRONG_QUERIES = 20  # Strong reads wait for the server's clock (~0.5 s each): a few are enough


def percentiles(times: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p99_ms": round(float(np.percentile(times, 99)), 2)}


@contextmanager
def engine_uri(engine: str, folder: Path, auto_compaction: bool) -> Iterator[str]:
    """The store URI of a fresh collection on `engine`, a server started (and stopped) here for it."""
    if engine == "lite":
        yield "milvus://bench.db?collection=bench"
        return
    with local_server(folder / "milvus-server", auto_compaction) as address:
        yield f"milvus://{address}?collection=bench&consistency=Bounded"


def server_peak_rss_gb(folder: Path) -> float | None:
    """The peak resident memory of the server whose binary lies under `folder`, None if none runs."""
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if str(folder) in (process / "cmdline").read_text():
                status = (process / "status").read_text()
                return round(int(status.split("VmHWM:")[1].split()[0]) / 2**20, 2)
        except OSError:
            continue
    return None


def wait_indexed(store: MilvusStore, size: int) -> None:
    """Flush (seal the last segment), wait until the server has indexed every row, then load the collection
    again. Until a sealed segment's index is loaded, the server searches it with its interim index (its own
    nprobe, whatever is asked: recall stayed at 0.53 for nprobe 1 to 128 at 20k) or exhaustively."""
    store._client.flush(store.collection)
    started = time.perf_counter()
    while True:
        described = store._client.describe_index(store.collection, "vector")
        indexed = int(described.get("indexed_rows", 0))
        if indexed >= size and not int(described.get("pending_index_rows", 0)):
            break
        print(f"  indexed {indexed}/{size} rows after {time.perf_counter() - started:.0f} s", file=sys.stderr)
        time.sleep(5)
    store._client.release_collection(store.collection)
    store._client.load_collection(store.collection)


def one_run(
    engine: str, size: int, index: str, queries: int, metadata: str, scratch: Path, auto_compaction: bool
) -> dict[str, object]:
    """Build one collection of `size` items with `index` and measure it (run in its own process)."""
    centres = np.random.default_rng(1).standard_normal((CLUSTERS, DIM), dtype=np.float32)
    data = clustered(size, CLUSTERS, 0, centres)
    asked = clustered(queries, CLUSTERS, 2, centres)
    labels = np.random.default_rng(3).integers(0, VALUES, size)
    colours = np.full((BATCH, COLOUR_DIM), 1 / np.sqrt(COLOUR_DIM), np.float32)
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as folder, engine_uri(engine, Path(folder), auto_compaction) as uri:
        store = open_store(f"{uri}&index={index}", Path(folder), DIM)
        assert isinstance(store, MilvusStore)
        if metadata == "dynamic":  # the collection is created without metadata fields: the column goes to JSON
            store.upsert(["-"], data[:1], colours[:1], [{}])
            store.delete(["-"])
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
        if engine == "lite":
            store._client.flush(store.collection)  # seals the last segment and builds its index
        else:
            wait_indexed(store, size)
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
            default = dict(INDEXES[index][1])  # last: the store's own settings, its filter widening included
            for setting, widening in [*((sweep, 1) for sweep in SWEEP.get(index, [])), (default, FILTER_WIDENING)]:
                store.search_params, store.filter_widening = setting, widening
                store.search(asked[:3], K, filters)  # warm up
                times, found = [], []
                for query in asked:
                    begun = time.perf_counter()
                    hits = store.search(query, K, filters)[0]
                    times.append((time.perf_counter() - begun) * 1000)
                    found.append([int(hit.id) for hit in hits])
                label = ",".join(f"{key}={value}" for key, value in setting.items()) or "exact"
                label = f"default ({label}, filtered x{widening})" if widening != 1 and setting else label
                rows[label] = {**percentiles(times), "recall@10": round(recall(found, truth), 4)}
                print(f"  {index} {size} {name} {label}: {rows[label]}", file=sys.stderr)
            if engine == "server":  # the last setting again, as the store reads by default
                store.consistency = "Strong"
                times = []
                for query in asked[:STRONG_QUERIES]:
                    begun = time.perf_counter()
                    store.search(query, K, filters)
                    times.append((time.perf_counter() - begun) * 1000)
                store.consistency = "Bounded"
                rows["strong"] = {**percentiles(times), "setting": label, "queries": STRONG_QUERIES}
                print(f"  {index} {size} {name} Strong, {label}: {rows['strong']}", file=sys.stderr)
            figures[name] = rows
        if engine == "server":
            figures["server_peak_rss_gb"] = server_peak_rss_gb(Path(folder))
        store.close()
    figures["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return figures


def filter_cost(size: int, queries: int, scratch: Path) -> dict[str, object]:
    """Filtered searches on a declared field and on a dynamic (JSON) key, side by side on one server.

    Two FLAT collections of the same items, one with the column declared and one with it in the dynamic
    field; the queries alternate between them, so both see the same load (this machine is shared, and
    runs minutes apart differed more than the two layouts did).
    """
    centres = np.random.default_rng(1).standard_normal((CLUSTERS, DIM), dtype=np.float32)
    data = clustered(size, CLUSTERS, 0, centres)
    asked = clustered(queries, CLUSTERS, 2, centres)
    labels = np.random.default_rng(3).integers(0, VALUES, size)
    colours = np.full((size, COLOUR_DIM), 1 / np.sqrt(COLOUR_DIM), np.float32)
    metadata = [{"articleType": f"type{label}"} for label in labels]
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as folder, local_server(Path(folder) / "milvus-server") as address:
        stores = {}
        for layout in ("declared", "dynamic"):
            store = open_store(
                f"milvus://{address}?collection={layout}&index=FLAT&consistency=Bounded", Path(folder), DIM
            )
            if layout == "dynamic":
                store.upsert(["-"], data[:1], colours[:1], [{}])  # created without the column: it goes to JSON
                store.delete(["-"])
            for start in range(0, size, BATCH):
                end = min(size, start + BATCH)
                store.upsert(
                    [str(n) for n in range(start, end)], data[start:end], colours[start:end], metadata[start:end]
                )
            wait_indexed(store, size)
            stores[layout] = store
        times: dict[str, list[float]] = {layout: [] for layout in stores}
        for query in asked:
            for layout, store in stores.items():
                begun = time.perf_counter()
                store.search(query, K, {"articleType": ["type0"]})
                times[layout].append((time.perf_counter() - begun) * 1000)
        for store in stores.values():
            store.close()
    figures: dict[str, object] = {layout: percentiles(values[3:]) for layout, values in times.items()}  # warm-up
    figures["dynamic_over_declared_p50"] = round(figures["dynamic"]["p50_ms"] / figures["declared"]["p50_ms"], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["lite", "server"], default="lite")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--indexes", nargs="+", default=["FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW"])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--metadata", choices=["declared", "dynamic"], default="declared")
    parser.add_argument(
        "--scratch", type=Path, default=Path(tempfile.gettempdir()), help="where a server's folder goes"
    )
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per run before it is given up")
    parser.add_argument(
        "--no-compaction",
        action="store_true",
        help="a server: no automatic compaction (at 1M it kept merging and indexing segments again for 20+ min)",
    )
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "INDEX"), help=argparse.SUPPRESS)
    parser.add_argument("--filter-cost", type=int, metavar="SIZE", help="a server: filters on declared vs JSON fields")
    args = parser.parse_args()
    if args.filter_cost:
        figures = filter_cost(args.filter_cost, args.queries, args.scratch)
        print(json.dumps(figures))
        previous = RESULTS / "milvus_server.json"
        runs = json.loads(previous.read_text())["runs"] if previous.exists() else {}
        runs[f"filter_cost@{args.filter_cost}"] = {"size": args.filter_cost, "queries": args.queries, **figures}
        write_results("milvus_server", {"engine": SERVER_ENGINE, "dim": DIM, "k": K, "runs": runs})
        return
    if args.one:
        figures = one_run(
            args.engine,
            int(args.one[0]),
            args.one[1],
            args.queries,
            args.metadata,
            args.scratch,
            not args.no_compaction,
        )
        print("RESULT " + json.dumps(figures))
        return
    name = "milvus" if args.engine == "lite" else "milvus_server"
    for size in args.sizes:
        for index in args.indexes:
            key = f"{index}@{size}" + ("" if args.metadata == "declared" else f"/{args.metadata}")
            key += "/no-compaction" if args.no_compaction else ""
            options = ["--engine", args.engine, "--metadata", args.metadata, "--scratch", str(args.scratch)]
            options += ["--no-compaction"] if args.no_compaction else []
            command = [sys.executable, __file__, "--one", str(size), index, "--queries", str(args.queries), *options]
            print(f"{index} at {size} items", flush=True)
            try:
                done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                outcome = {"error": f"over {args.timeout:.0f} s"}
            else:
                result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                outcome = json.loads(result[-1][7:]) if result else {"error": f"exit status {done.returncode}"}
            previous = RESULTS / f"{name}.json"  # runs accumulate (read again now: another run may have written)
            runs: dict[str, dict[str, object]] = json.loads(previous.read_text())["runs"] if previous.exists() else {}
            runs[key] = {"size": size, "index": index, "metadata": args.metadata, **outcome}
            runs[key] |= {"auto_compaction": False} if args.no_compaction else {}
            print(json.dumps(runs[key]), flush=True)
            engine = "milvus-lite 3.2.2 (pymilvus 3.0.2)" if args.engine == "lite" else SERVER_ENGINE
            write_results(name, {"engine": engine, "dim": DIM, "k": K, "runs": runs})


if __name__ == "__main__":
    main()
