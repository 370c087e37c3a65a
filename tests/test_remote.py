"""Images by URL: a catalog's http(s) image URLs fetched into the index, against a real server on 127.0.0.1.

Each failing URL is its item's problem with the reason (404, 500 then OK, 429, a hang, a trickle, an
oversize body with or without Content-Length, HTML, a redirect loop, a redirect to file:), a rebuild
fetches nothing again, a fetch killed with kill -9 resumes, and a URL never reads a local file.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_server import ImageServer
from test_encoder_int8 import int8_cache  # noqa: F401  # a fixture: an int8 cache of this module's own

from fashionrec.build import BuildReport, build_index
from fashionrec.catalog import ImageSource, load_catalog
from fashionrec.encoders import Encoder, EncoderError
from fashionrec.encoders.int8 import calibration_pixels, int8_path
from fashionrec.images import ImageError
from fashionrec.remote import URL_CACHE, CachedSource, FetchSettings, cache_name, fetch_images
from fashionrec.search import Recommender

from conftest import SHARED_ZIP, run_cli, sample_rows

FAST = FetchSettings(concurrency=8, timeout=0.5, retries=1, backoff=0.01, max_bytes=1_000_000)


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """40 real catalog photos by file name."""
    _, rows = sample_rows(40, seed=15)
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        return {f"{row[0]}.jpg": archive.read(f"images/{row[0]}.jpg") for row in rows}


@pytest.fixture
def server(photos: dict[str, bytes]) -> Iterator[ImageServer]:
    with ImageServer(photos) as running:
        yield running


def write_table(folder: Path, rows: list[tuple[str, str]]) -> Path:
    """A CSV catalog of (id, image) rows: image paths relative to it, or URLs."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "catalog.csv", "w", newline="") as file:
        csv.writer(file).writerows([("id", "image", "productDisplayName"), *((i, v, f"product {i}") for i, v in rows)])
    return folder / "catalog.csv"


def url_rows(server: ImageServer, names: list[str], route: str = "img") -> list[tuple[str, str]]:
    return [(name.removesuffix(".jpg"), server.url(f"/{route}/{name}")) for name in names]


def test_urls_are_fetched_and_each_failure_is_its_items_problem(
    tmp_path: Path, server: ImageServer, photos: dict[str, bytes], encoder: Encoder
) -> None:
    names = sorted(photos)
    (tmp_path / "pics").mkdir()
    for name in names[20:22]:
        (tmp_path / "pics" / name).write_bytes(photos[name])
    bad = {
        "missing": ("/missing", "HTTP 404 Not Found"),
        "hang": ("/hang", "timed out (limit 0.5 s a try) (2 tries)"),
        "trickle": ("/trickle", "timed out"),
        "big": ("/big", "image too large (over 1,000,000 bytes)"),
        "declared-big": ("/declared-big", "bytes said its Content-Length"),
        "html": ("/html", "the server sent text/html, not an image"),
        "loop": ("/loop", "more than 5 redirects"),
        "to-file": ("/to-file", "redirected to a file: URL; only http and https are fetched"),
    }
    rows = [
        *url_rows(server, names[:17]),
        ("flaky", server.url(f"/flaky/{names[17]}")),  # 500, then the image
        ("busy", server.url(f"/busy/{names[18]}")),  # 429, then the image
        ("moved", server.url(f"/moved/{names[19]}")),  # 301 to the image
        *((name.removesuffix(".jpg"), f"pics/{name}") for name in names[20:22]),  # local files beside URLs
        *((item_id, server.url(path)) for item_id, (path, _) in bad.items()),
    ]
    catalog = load_catalog(write_table(tmp_path, rows), image_column="image")
    report = build_index(catalog, tmp_path / "idx", encoder, workers=0, progress=False, fetch=FAST)

    assert report.total == 22 and report.embedded == 22
    problems = {problem.item: problem.message for problem in report.problems}
    assert set(problems) == set(bad)
    for item_id, (path, reason) in bad.items():
        assert problems[item_id].startswith(f"image {server.url(path)}: ") and reason in problems[item_id]
    assert server.requests["/loop"] == 6 and server.requests["/missing"] == 1  # 404 is not tried again
    cached = sorted(path.name for path in (tmp_path / "idx" / URL_CACHE).iterdir())
    assert cached == sorted(cache_name(url) for _, url in rows[:20])  # the failures left nothing behind

    recommender = Recommender.open(tmp_path / "idx")
    assert recommender.image_bytes("flaky") == photos[names[17]]
    assert recommender.image_bytes(names[20].removesuffix(".jpg")) == photos[names[20]]
    best = recommender.similar_to_image(photos[names[19]], k=1)[0]
    assert best.id == "moved" and best.image == server.url(f"/moved/{names[19]}")


def test_a_rebuild_fetches_only_what_is_new_and_keeps_what_fails(
    tmp_path: Path, server: ImageServer, photos: dict[str, bytes], encoder: Encoder
) -> None:
    names = sorted(photos)
    rows = url_rows(server, names[:10])
    index = tmp_path / "idx"

    def build(rows: list[tuple[str, str]], settings: FetchSettings = FAST) -> BuildReport:
        catalog = load_catalog(write_table(tmp_path, rows), image_column="image")
        return build_index(catalog, index, encoder, workers=0, progress=False, fetch=settings)

    assert build(rows).embedded == 10 and sum(server.requests.values()) == 10

    again = build(rows)
    assert (again.embedded, again.unchanged, sum(server.requests.values())) == (0, 10, 10)

    grown = build([*rows, *url_rows(server, names[10:12])])
    assert (grown.embedded, grown.unchanged, sum(server.requests.values())) == (2, 10, 12)

    gone = rows[0][0]  # its new URL fails: the item keeps its stored vector and is reported
    changed = build([(gone, server.url("/missing")), *rows[1:], *url_rows(server, names[10:12])])
    assert changed.total == 12 and [str(p) for p in changed.problems] == [
        f"{gone}: image {server.url('/missing')}: HTTP 404 Not Found (skipped)"
    ]
    assert Recommender.open(index).similar_to_item(gone, k=1)  # still searchable

    refetched = build([*rows, *url_rows(server, names[10:12])], FetchSettings(refetch=True))
    assert (refetched.embedded, refetched.unchanged) == (0, 12)  # the same bytes: nothing embedded again
    assert all(server.requests[f"/img/{name}"] == 2 for name in names[:12])


def test_a_killed_fetchs_temp_files_are_removed_and_never_read(
    tmp_path: Path, server: ImageServer, photos: dict[str, bytes]
) -> None:
    name = sorted(photos)[0]
    url = server.url(f"/img/{name}")
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process that has exited: its temp files are leftovers
    cache = tmp_path / "idx" / URL_CACHE
    cache.mkdir(parents=True)
    half = cache / f".{cache_name(url)}.{gone.pid}.1.tmp"
    half.write_bytes(photos[name][:100])  # what kill -9 leaves in the middle of a write
    live = cache / f".{cache_name(url)}.{os.getpid()}.2.tmp"  # a write of a running process: not touched
    live.write_bytes(b"")
    catalog = fetch_images(load_catalog(write_table(tmp_path, [("a", url)]), image_column="image"), tmp_path / "idx")
    assert not half.exists() and live.exists() and server.requests[f"/img/{name}"] == 1
    assert catalog.source.read(url) == photos[name]


def test_the_catalog_refuses_what_it_will_not_fetch(tmp_path: Path) -> None:
    refused = {
        "ftp": ("ftp://127.0.0.1/a.jpg", "a ftp: URL; only http and https image URLs are fetched"),
        "file": ("file:///etc/passwd", "a file: URL; only http and https image URLs are fetched"),
        "file-upper": ("FILE:/etc/passwd", "a file: URL"),
        "data": ("data:image/png;base64,iVBORw0KGgo=", "a data: URL"),
        "no-host": ("http:///a.jpg", "URL has no host"),
        "space": ("http://127.0.0.1/a b.jpg", "URL contains spaces or control characters"),
        "port": ("https://127.0.0.1:99999/a.jpg", "unusable URL"),
    }
    catalog = load_catalog(
        write_table(tmp_path, [("ok", "HTTPS://127.0.0.1/a.jpg"), *((k, v) for k, (v, _) in refused.items())]),
        image_column="image",
    )
    assert [item.image for item in catalog.items] == ["HTTPS://127.0.0.1/a.jpg"]
    problems = {problem.item: problem.message for problem in catalog.problems}
    assert set(problems) == set(refused)
    for item_id, (value, reason) in refused.items():
        assert problems[item_id].startswith(f"image {value!r}: ") and reason in problems[item_id]


def test_a_url_never_reads_a_local_file(tmp_path: Path) -> None:
    (tmp_path / "http:").mkdir()  # what a URL would name if it were taken as a relative path
    (tmp_path / "http:" / "secret.jpg").write_bytes(b"not for a URL")
    for source in (ImageSource(tmp_path), CachedSource(tmp_path, tmp_path / URL_CACHE)):
        with pytest.raises(ImageError, match="not fetched"):
            source.read("http://secret.jpg")
    assert len(cache_name("http://x/../../etc/passwd")) == 64  # cached files are named by the hash alone


def test_an_int8_encoder_calibrates_on_fetched_urls(
    tmp_path: Path, server: ImageServer, photos: dict[str, bytes]
) -> None:
    """`fashionrec index --encoder X:int8` fetches first: an all-URL catalog has nothing else to calibrate on."""
    catalog = load_catalog(write_table(tmp_path, url_rows(server, sorted(photos)[:6])), image_column="image")
    with pytest.raises(EncoderError, match="no readable image to calibrate"):
        calibration_pixels(catalog, 160, "pad")
    assert calibration_pixels(fetch_images(catalog, tmp_path / "idx", FAST, progress=False), 160, "pad").shape == (
        6,
        160,
        160,
        3,
    )


@pytest.mark.ray
@pytest.mark.slow
def test_the_ray_runner_reads_fetched_urls(
    tmp_path: Path,
    server: ImageServer,
    photos: dict[str, bytes],
    encoder: Encoder,
    ray_instance: None,
) -> None:
    rows = [*url_rows(server, sorted(photos)[:20]), ("gone", server.url("/missing"))]
    catalog = load_catalog(write_table(tmp_path, rows), image_column="image")
    report = build_index(catalog, tmp_path / "idx", encoder, runner="ray", progress=False, fetch=FAST)
    assert report.total == 20 and [str(p) for p in report.problems] == [
        f"gone: image {server.url('/missing')}: HTTP 404 Not Found (skipped)"
    ]
    assert Recommender.open(tmp_path / "idx").image_bytes(rows[3][0]) == photos[f"{rows[3][0]}.jpg"]


@pytest.mark.slow
def test_an_int8_index_of_an_all_url_catalog_is_calibrated_on_its_fetched_photos(
    tmp_path: Path,
    server: ImageServer,
    photos: dict[str, bytes],
    int8_cache: Path,  # noqa: F811  # the fixture imported above
    encoder: Encoder,
) -> None:
    table = write_table(tmp_path, url_rows(server, sorted(photos)))
    command = ["index", str(table), "--out", str(tmp_path / "idx"), "--image-column", "image"]
    result = run_cli(*command, "--encoder", "efficientnet-lite0:int8")
    assert result.returncode == 0, result.stderr
    assert int8_path(int8_cache, encoder.spec).is_file()  # quantised now, from the fetched photos
    assert len(Recommender.open(tmp_path / "idx")) == len(photos)


@pytest.mark.slow
def test_a_fetch_killed_mid_way_resumes_without_fetching_again(
    tmp_path: Path, photos: dict[str, bytes], encoder: Encoder
) -> None:
    with ImageServer(photos, latency=0.1) as server:
        names = sorted(photos)
        table = write_table(tmp_path, url_rows(server, names))
        index = tmp_path / "idx"
        cache = index / URL_CACHE
        command = [sys.executable, "-m", "fashionrec.cli", "index", str(table), "--out", str(index)]
        process = subprocess.Popen(
            [*command, "--image-column", "image", "--fetch-concurrency", "2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and len(list(cache.glob("[0-9a-f]*"))) < 5:
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        fetched = {path.name for path in cache.glob("[0-9a-f]*")}
        assert 5 <= len(fetched) < len(names), "the fetch must be stopped part-way"
        before = server.requests.copy()

        catalog = load_catalog(table, image_column="image")  # worker processes read the cache too:
        report = build_index(catalog, index, encoder, workers=2, progress=False)
    assert report.total == len(names) and not report.problems
    for name in names:
        again = server.requests[f"/img/{name}"] - before[f"/img/{name}"]
        assert again == (0 if cache_name(server.url(f"/img/{name}")) in fetched else 1)
    assert not list(cache.glob(".*"))  # no temp file of the killed fetch is left
