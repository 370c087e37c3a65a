"""Load test of the REST API: N concurrent clients mixing photo searches and item queries.

    python bench/api_load.py INDEX_DIR [--duration 60] [--clients 16] [--upload-share 0.2] [--url URL]

Starts `fashionrec serve INDEX_DIR` on a free port (or uses --url, a server already running on that
index), runs the clients for --duration seconds after a short warm-up, prints requests/s, p50/p99
latency and errors per kind of request, and writes bench/results/api_load.json. The clients run on
the same machine as the server and take some of its CPU: the figures are a lower bound. They use
aiohttp, which takes a quarter of the CPU httpx takes per request (measured: 3 s instead of 11 s of
CPU for the same 20 s run), so more of the cores go to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import httpx
import numpy as np

from fashionrec.index import IndexStore

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOG = ROOT.parent / "shared" / "data" / "fashion-product-images-small.zip"
RESULTS = ROOT / "bench" / "results" / "api_load.json"
PHOTOS = 300  # distinct catalog photos uploaded as queries


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", type=Path, help="index directory the server serves")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds (default 60)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--upload-share", type=float, default=0.2, help="fraction of requests that upload a photo")
    parser.add_argument("--k", type=int, default=10, help="results per query")
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG, help="Kaggle zip the photos come from")
    parser.add_argument("--url", help="use this running server instead of starting one")
    parser.add_argument("--workers", type=int, default=1, help="server processes when the benchmark starts it")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(index: Path, workers: int) -> Iterator[str]:
    """`fashionrec serve` on a free loopback port, until the block ends."""
    port = free_port()
    command = [sys.executable, "-m", "fashionrec.cli", "serve", str(index), "--port", str(port)]
    process = subprocess.Popen([*command, "--workers", str(workers), "--no-access-log"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # the full index takes a while to load
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start (exit code {process.poll()})")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v1/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def catalog_photos(catalog: Path, ids: list[str], count: int) -> list[bytes]:
    """Real product photos from the catalog zip, preferring items that are in the index."""
    with zipfile.ZipFile(catalog) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith("images/") and n.endswith(".jpg"))
        wanted = {f"images/{i}.jpg" for i in ids}
        chosen = [n for n in names if n in wanted] or names
        return [archive.read(n) for n in random.Random(0).sample(chosen, min(count, len(chosen)))]


async def client(
    http: aiohttp.ClientSession, args: argparse.Namespace, ids: list[str], photos: list[bytes], seed: int, stop: float
) -> list[tuple[str, float, float, int]]:
    """One client's requests as (kind, start, seconds, status); status 0 is a transport error."""
    rng = random.Random(seed)
    done: list[tuple[str, float, float, int]] = []
    while (started := time.perf_counter()) < stop:
        roll = rng.random()
        if roll < args.upload_share:
            kind = "search (upload)"
            form = aiohttp.FormData()
            form.add_field("image", rng.choice(photos), filename="q.jpg")
            request = http.post("/v1/search", params={"k": args.k}, data=form)
        elif roll < args.upload_share + (1 - args.upload_share) * 0.75:
            kind = "similar (id)"
            request = http.get(f"/v1/items/{rng.choice(ids)}/similar", params={"k": args.k})
        else:
            kind = "item (id)"
            request = http.get(f"/v1/items/{rng.choice(ids)}")
        try:
            async with request as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError:
            status = 0
        done.append((kind, started, time.perf_counter() - started, status))
    return done


def summarise(samples: list[tuple[str, float, float, int]], seconds: float) -> dict[str, object]:
    latencies = np.array([s[2] for s in samples]) * 1000
    errors = sum(not 200 <= s[3] < 300 for s in samples)
    return {
        "requests": len(samples),
        "requests_per_s": round(len(samples) / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1) if len(samples) else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if len(samples) else None,
        "errors": errors,
    }


async def load(url: str, args: argparse.Namespace, ids: list[str], photos: list[bytes]) -> dict[str, object]:
    connector = aiohttp.TCPConnector(limit=args.clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base_url=url, connector=connector, timeout=timeout) as http:
        begin = time.perf_counter()
        measured_from = begin + args.warmup
        stop = measured_from + args.duration
        runs = [client(http, args, ids, photos, seed, stop) for seed in range(args.clients)]
        samples = [s for run in await asyncio.gather(*runs) for s in run if s[1] >= measured_from]
    kinds = sorted({s[0] for s in samples})
    return {
        "overall": summarise(samples, args.duration),
        "by_kind": {kind: summarise([s for s in samples if s[0] == kind], args.duration) for kind in kinds},
    }


def main() -> None:
    args = parse_args()
    store = IndexStore.open(args.index)
    ids = sorted(store.hashes())
    store.close()
    photos = catalog_photos(args.catalog, ids, PHOTOS)
    load_before = os.getloadavg()
    if args.url:
        results = asyncio.run(load(args.url.rstrip("/"), args, ids, photos))
    else:
        with server(args.index, args.workers) as url:
            results = asyncio.run(load(url, args, ids, photos))
    report = {
        "config": {
            "index": str(args.index),
            "items": len(ids),
            "clients": args.clients,
            "duration_s": args.duration,
            "upload_share": args.upload_share,
            "k": args.k,
            "server_workers": None if args.url else args.workers,
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    overall = results["overall"]
    print(f"{len(ids)} items, {args.clients} clients, {args.duration:.0f} s, {args.upload_share:.0%} uploads")
    for kind, stats in [("overall", overall), *results["by_kind"].items()]:  # type: ignore[union-attr]
        print(
            f"{kind:>16}: {stats['requests_per_s']:7.1f} req/s  p50 {stats['p50_ms']} ms  "
            f"p99 {stats['p99_ms']} ms  errors {stats['errors']}/{stats['requests']}"
        )
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
