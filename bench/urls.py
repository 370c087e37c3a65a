"""Images by URL: how fast a catalog's image URLs are fetched, by how many requests run at once.

A real HTTP server (tests/image_server.py, in a process of its own) serves real catalog photos from the
shared zip, each answer delayed by --latency seconds, as a remote image server would be. For each
--concurrency the same URLs are fetched into an empty cache (the fetch of a first build), then once
more with everything cached (a rebuild: nothing should be requested). Then a whole first build of
the all-URL catalog, fetch included, against a build of the same photos as local files.

    PYTHONPATH=src nice -n 5 python bench/urls.py --images 300 --latency 0.05

Before this feature a catalog could not name its images by URL at all (the catalog refused them); the
concurrency-1 row is what fetching them one at a time gives. It cannot see a real network (loopback:
no bandwidth limit, no TLS, no packet loss), nor a server that throttles many connections.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import sys
import tempfile
import time
import zipfile
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

from common import REPO, SHARED_ZIP, write_results

from fashionrec.build import build_index
from fashionrec.catalog import load_catalog
from fashionrec.encoders import load_encoder
from fashionrec.remote import Fetcher, FetchSettings, cache_name

sys.path.insert(0, str(REPO / "tests"))  # the tests' image server: one server for the tests and this benchmark
from image_server import ImageServer  # noqa: E402


def serve(names: list[str], latency: float, address: multiprocessing.Queue, stop: EventType) -> None:
    """Serve the photos `names` of the shared zip until `stop`: in another process, so the server's threads do
    not share the fetcher's interpreter lock."""
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        photos = {name.rsplit("/", 1)[-1]: archive.read(name) for name in names}
    with ImageServer(photos, latency) as server:
        address.put(server.url(""))
        stop.wait()


def photo_names(count: int) -> list[str]:
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        return sorted(n for n in archive.namelist() if n.startswith("images/") and n.endswith(".jpg"))[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server waits before each answer")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()

    names = photo_names(args.images)
    context = multiprocessing.get_context("spawn")
    address, stop = context.Queue(), context.Event()
    server = context.Process(target=serve, args=(names, args.latency, address, stop), daemon=True)
    server.start()
    base = address.get(timeout=120)
    urls = [f"{base}/img/{name.rsplit('/', 1)[-1]}" for name in names]
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-urls-") as work:
            for concurrency in args.concurrency:
                cache = Path(work) / f"cache-{concurrency}"
                cache.mkdir()
                fetcher = Fetcher(FetchSettings(concurrency=concurrency))
                started = time.perf_counter()
                failures = fetcher.fetch_all(urls, cache, progress=False)
                seconds = time.perf_counter() - started
                assert not failures, failures
                rows.append(
                    {"concurrency": concurrency, "seconds": round(seconds, 2), "images_per_s": len(urls) / seconds}
                )
                print(f"concurrency {concurrency:>3}: {len(urls) / seconds:7.1f} images/s ({seconds:.1f} s)")
            builds = build_comparison(Path(work), names, urls, base)
    finally:
        stop.set()
        server.join(timeout=30)
    first = rows[0]["images_per_s"]
    for row in rows:
        row["images_per_s"] = round(row["images_per_s"], 1)
        row["vs_first"] = round(row["images_per_s"] / first, 2)
    print(f"{rows[-1]['concurrency']} at once: {rows[-1]['vs_first']}x {rows[0]['concurrency']} at once")
    write_results(
        "urls",
        {
            "images": len(urls),
            "latency_s": args.latency,
            "fetch": rows,
            **builds,
            "load_average": os.getloadavg(),
        },
    )


def build_comparison(work: Path, names: list[str], urls: list[str], base: str) -> dict[str, object]:
    """A first build of the all-URL catalog (fetch included, default settings), a rebuild, and the same
    photos as local files."""
    encoder = load_encoder()
    folder = work / "catalog"
    (folder / "images").mkdir(parents=True)
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        for name in names:
            (folder / name).write_bytes(archive.read(name))
    tables = {"urls": urls, "files": names}
    figures: dict[str, object] = {}
    for kind, images in tables.items():
        table = folder / f"{kind}.csv"
        with open(table, "w", newline="") as file:
            csv.writer(file).writerows([("id", "image"), *((str(n), image) for n, image in enumerate(images))])
        for run in ("first", "again"):
            started = time.perf_counter()
            report = build_index(
                load_catalog(table, image_column="image"), work / f"idx-{kind}", encoder, progress=False
            )
            seconds = time.perf_counter() - started
            assert report.total == len(names) and not report.problems, report.problems
            figures[f"build_{kind}_{run}_s"] = round(seconds, 2)
            print(f"build, {kind}, {run}: {seconds:.1f} s ({report.embedded} embedded)")
    cached = work / "idx-urls" / "images"
    assert all((cached / cache_name(url)).is_file() for url in urls)
    return figures


if __name__ == "__main__":
    main()
