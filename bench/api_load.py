"""Load test of the REST API: N concurrent clients mixing photo searches and item queries.

    python bench/api_load.py INDEX_DIR [--duration 60] [--clients 16] [--upload-share 0.2] [--url URL]
    python bench/api_load.py INDEX_DIR --baseline-src /work/main/src [--rounds 3]   # A/B, two servers

Starts `fashionrec serve INDEX_DIR` on a free port (or uses --url, a server already running on that
index), runs the clients for --duration seconds after a short warm-up, prints requests/s, p50/p99
latency and errors per kind of request, and the server's CPU seconds per request (from /proc, when
it started the server), and writes bench/results/api_load.json. With --baseline-src, a second server
runs the code of that source folder (another checkout's `src`), and the load alternates between the
two in --rounds rounds (baseline first), --duration split between them: both sides see the same
cores and the same neighbours, so their ratio is what to read on a shared machine. The clients run on
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
from dataclasses import dataclass
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
    parser.add_argument("--baseline-src", type=Path, help="A/B: also serve the code of this src folder, alternating")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds per side (default 3)")
    return parser.parse_args()


Sample = tuple[str, float, float, int]  # kind, start, seconds, status
Measured = tuple[list[Sample], float]  # samples, server CPU seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    pid: int | None  # None: a server this benchmark did not start (--url)

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far (Linux /proc; 0 elsewhere or without a pid)."""
        stat = Path(f"/proc/{self.pid}/stat")
        if self.pid is None or not stat.is_file():
            return 0.0
        fields = stat.read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@contextmanager
def server(index: Path, workers: int, src: Path | None = None) -> Iterator[Server]:
    """`fashionrec serve` on a free loopback port, until the block ends; with `src`, that folder's code."""
    port = free_port()
    command = [sys.executable, "-m", "fashionrec.cli", "serve", str(index), "--port", str(port)]
    env = os.environ | ({"PYTHONPATH": str(src.resolve())} if src else {})
    process = subprocess.Popen([*command, "--workers", str(workers), "--no-access-log"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # the full index takes a while to load
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start (exit code {process.poll()})")
            time.sleep(0.5)
        yield Server(url, process.pid)
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
) -> list[Sample]:
    """One client's requests as (kind, start, seconds, status); status 0 is a transport error."""
    rng = random.Random(seed)
    done: list[Sample] = []
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


def summarise(samples: list[Sample], seconds: float) -> dict[str, object]:
    latencies = np.array([s[2] for s in samples]) * 1000
    errors = sum(not 200 <= s[3] < 300 for s in samples)
    return {
        "requests": len(samples),
        "requests_per_s": round(len(samples) / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1) if len(samples) else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if len(samples) else None,
        "errors": errors,
    }


async def load(
    target: Server, args: argparse.Namespace, ids: list[str], photos: list[bytes], seconds: float
) -> Measured:
    """The requests of all clients during `seconds` after the warm-up, and the server's CPU seconds meanwhile."""
    connector = aiohttp.TCPConnector(limit=args.clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base_url=target.url, connector=connector, timeout=timeout) as http:
        begin = time.perf_counter()
        measured_from = begin + args.warmup
        stop = measured_from + seconds
        cpu = asyncio.create_task(cpu_between(target, measured_from, stop))
        runs = [client(http, args, ids, photos, seed, stop) for seed in range(args.clients)]
        samples = [s for run in await asyncio.gather(*runs) for s in run if s[1] >= measured_from]
        return samples, await cpu


async def cpu_between(target: Server, start: float, stop: float) -> float:
    """The server's CPU seconds between two perf_counter times (now or later)."""
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    before = target.cpu_seconds()
    await asyncio.sleep(max(0.0, stop - time.perf_counter()))
    return target.cpu_seconds() - before


def measure(
    target: Server, args: argparse.Namespace, ids: list[str], photos: list[bytes], seconds: float | None = None
) -> Measured:
    """Load `target` for `seconds` (default --duration) after the warm-up; the samples and the server's CPU."""
    return asyncio.run(load(target, args, ids, photos, seconds or args.duration))


def report(samples: list[Sample], cpu_seconds: float, seconds: float) -> dict[str, object]:
    """Overall and per-kind figures, and the server's CPU milliseconds per request (None if unknown)."""
    kinds = sorted({s[0] for s in samples})
    return {
        "overall": summarise(samples, seconds),
        "by_kind": {kind: summarise([s for s in samples if s[0] == kind], seconds) for kind in kinds},
        "server_cpu_ms_per_request": round(1000 * cpu_seconds / len(samples), 2) if cpu_seconds and samples else None,
        "server_cores": round(cpu_seconds / seconds, 2) if cpu_seconds else None,  # CPU it got: seconds per second
    }


def show(name: str, results: dict[str, object]) -> None:
    print(f"{name}: server CPU {results['server_cpu_ms_per_request']} ms a request, {results['server_cores']} cores")
    for kind, stats in [("overall", results["overall"]), *results["by_kind"].items()]:  # type: ignore[union-attr]
        print(
            f"{kind:>16}: {stats['requests_per_s']:7.1f} req/s  p50 {stats['p50_ms']} ms  "
            f"p99 {stats['p99_ms']} ms  errors {stats['errors']}/{stats['requests']}"
        )


def a_b(args: argparse.Namespace, ids: list[str], photos: list[bytes]) -> dict[str, object]:
    """Baseline and current code served side by side, loaded in alternating rounds; figures and ratios."""
    seconds = args.duration / args.rounds
    sides: dict[str, list[Measured]] = {"baseline": [], "current": []}
    with server(args.index, args.workers, args.baseline_src) as old, server(args.index, args.workers) as new:
        for round_number in range(args.rounds):
            for name, target in (("baseline", old), ("current", new)):
                sides[name].append(measure(target, args, ids, photos, seconds))
                print(f"round {round_number + 1}/{args.rounds} {name}: {len(sides[name][-1][0])} requests", flush=True)
    results = {
        name: report([s for samples, _ in runs for s in samples], sum(cpu for _, cpu in runs), seconds * len(runs))
        for name, runs in sides.items()
    }
    old, new = headline(results["baseline"]), headline(results["current"])
    results["current_over_baseline"] = {key: _ratio(new[key], old[key]) for key in old}
    return results


def headline(results: dict[str, object]) -> dict[str, float | None]:
    overall: dict[str, float | None] = results["overall"]  # type: ignore[assignment]
    cpu: float | None = results["server_cpu_ms_per_request"]  # type: ignore[assignment]
    cores: float | None = results["server_cores"]  # type: ignore[assignment]
    return {
        "requests_per_s": overall["requests_per_s"],
        "p99_ms": overall["p99_ms"],
        "server_cpu_ms_per_request": cpu,
        "server_cores": cores,
    }


def _ratio(new: float | None, old: float | None) -> float | None:
    return round(new / old, 2) if new is not None and old else None


def main() -> None:
    args = parse_args()
    store = IndexStore.open(args.index)
    ids = sorted(store.hashes())
    store.close()
    photos = catalog_photos(args.catalog, ids, PHOTOS)
    load_before = os.getloadavg()
    if args.baseline_src:
        results = a_b(args, ids, photos)
    elif args.url:
        results = report(*measure(Server(args.url.rstrip("/"), None), args, ids, photos), args.duration)
    else:
        with server(args.index, args.workers) as target:
            results = report(*measure(target, args, ids, photos), args.duration)
    config = {
        "index": str(args.index),
        "items": len(ids),
        "clients": args.clients,
        "duration_s": args.duration,
        "upload_share": args.upload_share,
        "k": args.k,
        "server_workers": None if args.url else args.workers,
        "baseline_src": str(args.baseline_src) if args.baseline_src else None,
        "rounds": args.rounds if args.baseline_src else None,
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": config, **results}, indent=2) + "\n")
    print(f"{len(ids)} items, {args.clients} clients, {args.duration:.0f} s, {args.upload_share:.0%} uploads")
    for name in ("baseline", "current") if args.baseline_src else ():
        show(name, results[name])  # type: ignore[arg-type]
    if args.baseline_src:
        print(f"current / baseline: {results['current_over_baseline']}")
    else:
        show("server", results)
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
