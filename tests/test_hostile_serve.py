"""The serving side under hostile input (issue #12): a real `fashionrec index` over a hostile catalog zip,
a real `fashionrec serve` process over it, real catalog JPEGs and hostile images made here with Pillow.

Every case asserts: no 5xx, no traceback in any body or page, no file outside the catalog or the index
touched (victim files keep their bytes), and a clear message for every refused thing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Route, sync_playwright
from streamlit.testing.v1 import AppTest
from test_api import KEY, WRITE, assert_error, serve
from test_app_browser import CHROMIUM, CHROMIUM_ARGS

import fashionrec.app
from fashionrec.app.state import Query
from fashionrec.index import DATABASE, MANIFEST, UPLOADS

from conftest import REPO, SHARED_ZIP, copy_index, free_port, run_cli, sample_rows, small_tmpfs

# Slow as a whole: its own index from a real `fashionrec index` run and its own server process.
pytestmark = pytest.mark.slow

VICTIM_BYTES = b"the victim's own bytes\n"
SQLITE_MAGIC = b"SQLite format 3"
UPLOAD_TOKEN = "0" * 32 + "-" + "1" * 16  # the shape of an add_item name, for a planted symlink
ODD_IDS = ["a b", "a+b", "x:y", "a/b", "50%", "q?x", "h#1", "ü-é"]


def encoded(data: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    data.save(out, fmt)
    return out.getvalue()


def gradient(low: float, high: float, dtype: type) -> np.ndarray:
    return np.linspace(low, high, 80 * 60).reshape(80, 60).astype(dtype)


# Images that decode but that a browser (or Streamlit's image code) cannot show as they are.
HOSTILE_IMAGES: dict[str, Callable[[], bytes]] = {
    "grey16.png": lambda: encoded(Image.fromarray(gradient(0, 65535, np.uint16)), "PNG"),
    "wide.png": lambda: encoded(Image.new("RGB", (5000, 1), (200, 30, 60)), "PNG"),
    "lab.tif": lambda: encoded(Image.new("LAB", (60, 80), (60, 40, -30)), "TIFF"),
    "float.tif": lambda: encoded(Image.fromarray(gradient(-0.5, 3.0, np.float32)), "TIFF"),
    "int32.tif": lambda: encoded(Image.fromarray(gradient(-1e6, 1e6, np.int32)), "TIFF"),
    "i16.tif": lambda: encoded(Image.fromarray(gradient(4000, 0, np.uint16)).convert("I;16"), "TIFF"),
    "cmyk.tif": lambda: encoded(Image.new("CMYK", (60, 80), (0, 180, 90, 10)), "TIFF"),
    "bilevel.tif": lambda: encoded(Image.fromarray(gradient(0, 1, np.float32) > 0.3), "TIFF"),
}


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "/' not in text and ".py" not in text, text[:2000]


def assert_no_5xx(response: httpx.Response) -> httpx.Response:
    assert response.status_code < 500, (response.status_code, response.text)
    no_traceback(response.text if "json" in response.headers.get("content-type", "") else "")
    return response


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file outside the catalog and the index that a hostile row points at."""
    path = tmp_path_factory.mktemp("x") / "victim.txt"
    path.write_bytes(VICTIM_BYTES)
    return path


@pytest.fixture(scope="module")
def hostile_zip(tmp_path_factory: pytest.TempPathFactory, victim: Path) -> tuple[Path, dict[str, str]]:
    """The issue's repro: styles.csv `id,name,picture` whose picture values use the uploaded-image marker,
    with zip members of those names holding a real JPEG; plus real products and hostile images."""
    header, rows = sample_rows(12, seed=12)
    hostile_paths = {
        "victim": f"index:{victim}",
        "db": f"index:{DATABASE}",
        "manifest": f"index:{MANIFEST}",
        "climb": f"index:{UPLOADS}/../{DATABASE}",
        "planted": f"index:{UPLOADS}/{UPLOAD_TOKEN}",  # a symlink to the victim, planted in uploads/
    }
    path = tmp_path_factory.mktemp("hostile") / "cat.zip"
    with zipfile.ZipFile(SHARED_ZIP) as shared, zipfile.ZipFile(path, "w") as archive:
        jpeg = shared.read(f"images/{rows[0][0]}.jpg")
        lines = ["id,name,picture"]
        for row in rows:
            archive.writestr(f"images/{row[0]}.jpg", shared.read(f"images/{row[0]}.jpg"))
            lines.append(f"{row[0]},{row[header.index('productDisplayName')].replace(',', ' ')},images/{row[0]}.jpg")
        for item_id, picture in hostile_paths.items():
            archive.writestr(picture, jpeg)
            lines.append(f"{item_id},hostile {item_id},{picture}")
        for name, make in HOSTILE_IMAGES.items():
            archive.writestr(f"images/{name}", make())
            lines.append(f"{name.partition('.')[0]},odd {name},images/{name}")
        archive.writestr("styles.csv", "\n".join(lines) + "\n")
    return path, hostile_paths


def plant_rows(index: Path, rows: dict[str, str | None]) -> None:
    """Rows as an index built before the fix may hold them (id -> image, None: a real product's image),
    copied from a real product's row."""
    with sqlite3.connect(index / DATABASE) as db, sqlite3.connect(index / "vectors.sqlite") as vectors:
        template = db.execute("SELECT id FROM items WHERE image LIKE 'images/%.jpg' ORDER BY row LIMIT 1").fetchone()[0]
        for item_id, image in rows.items():
            vectors.execute(  # the vectors first, as the index writes them (index.py)
                "INSERT OR REPLACE INTO vectors (id, vector, colour, metadata) "
                "SELECT ?, vector, colour, json_object('name', ?) FROM vectors WHERE id = ?",
                (item_id, f"odd {item_id}", template),
            )
            db.execute(
                "INSERT OR REPLACE INTO items (id, image, image_hash, metadata) "
                "SELECT ?, COALESCE(?, image), image_hash, json_object('name', ?) FROM items WHERE id = ?",
                (item_id, image, f"odd {item_id}", template),
            )


@pytest.fixture(scope="module")
def hostile_index(
    tmp_path_factory: pytest.TempPathFactory, hostile_zip: tuple[Path, dict[str, str]], victim: Path
) -> Path:
    """`fashionrec index cat.zip --image-column picture --out idx`, as the issue's repro.

    Where the catalog side refuses a hostile row (as it now should), the row is planted in the database
    directly, as an index built before the fix may hold it: the server must be safe either way.
    """
    zip_path, hostile_paths = hostile_zip
    out = tmp_path_factory.mktemp("hidx") / "idx"
    result = run_cli("index", str(zip_path), "--image-column", "picture", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(out / DATABASE) as db:
        indexed = {row[0] for row in db.execute("SELECT id FROM items")}
    plant_rows(out, {i: p for i, p in hostile_paths.items() if i not in indexed} | dict.fromkeys(ODD_IDS))
    (out / UPLOADS).mkdir(exist_ok=True)
    (out / UPLOADS / UPLOAD_TOKEN).symlink_to(victim)
    return out


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, hostile_index: Path) -> Iterator[httpx.Client]:
    log = tmp_path_factory.mktemp("log") / "server.log"
    with serve(hostile_index, log, FASHIONREC_API_KEY=KEY) as client:
        client.log = log  # type: ignore[attr-defined]
        yield client


def test_hostile_image_paths_are_never_served_or_deleted(
    api: httpx.Client, hostile_index: Path, hostile_zip: tuple[Path, dict[str, str]], victim: Path
) -> None:
    database = (hostile_index / DATABASE).read_bytes()[:100]
    manifest = (hostile_index / MANIFEST).read_bytes()
    for item_id in hostile_zip[1]:
        response = assert_no_5xx(api.get(f"/v1/items/{item_id}/image"))
        assert_error(response, 404, item_id)
        assert SQLITE_MAGIC not in response.content and VICTIM_BYTES not in response.content
        assert b'"encoder"' not in response.content
    for item_id in hostile_zip[1]:
        assert assert_no_5xx(api.delete(f"/v1/items/{item_id}", headers=WRITE)).status_code == 204
        assert_error(api.get(f"/v1/items/{item_id}"), 404, item_id)
    assert victim.read_bytes() == VICTIM_BYTES
    assert (hostile_index / UPLOADS / UPLOAD_TOKEN).is_symlink()  # the planted link was not followed, nor removed
    assert (hostile_index / DATABASE).read_bytes()[:100] == database
    assert json.loads((hostile_index / MANIFEST).read_bytes())["encoder"] == json.loads(manifest)["encoder"]
    assert "refused image path" in api.log.read_text()  # type: ignore[attr-defined]
    assert api.get("/v1/health").json()["status"] == "ok"


def test_hostile_images_are_shown_as_8_bit_rgb(api: httpx.Client, hostile_zip: tuple[Path, dict[str, str]]) -> None:
    """As catalog products (their image endpoint, their similar products) and as uploaded queries."""
    for name, make in HOSTILE_IMAGES.items():
        item_id = name.partition(".")[0]
        response = assert_no_5xx(api.get(f"/v1/items/{item_id}/image"))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] in ("image/png", "image/jpeg")
        with Image.open(io.BytesIO(response.content)) as shown:
            assert shown.mode in ("RGB", "L", "RGBA", "P", "1"), (name, shown.mode)
        assert assert_no_5xx(api.get(f"/v1/items/{item_id}/similar", params={"k": 3})).status_code == 200
        found = assert_no_5xx(api.post("/v1/search", files={"image": (name, make(), "application/octet-stream")}))
        assert found.status_code == 200, found.text
        top = [i for m in found.json()["results"][:3] for i in (m["id"], *m["variants"])]  # flat images tie,
        assert item_id in top, (name, found.text)  # or collapse: near-identical vectors


def test_odd_ids_round_trip(api: httpx.Client) -> None:
    """Ids an older index may hold ('/', '%', '?', '#', spaces, '+', ':'): every URL the API gives works."""
    for item_id in ODD_IDS:
        url = f"/v1/items/{quote(item_id, safe='')}"
        item = assert_no_5xx(api.get(url))
        assert item.status_code == 200 and item.json()["id"] == item_id, (item_id, item.text)
        assert item.json()["image_url"] == f"{url}/image"
        similar = assert_no_5xx(api.get(f"{url}/similar", params={"k": 20}))
        assert similar.status_code == 200
        for match in similar.json()["results"]:
            assert match["image_url"] == f"/v1/items/{quote(match['id'], safe='')}/image"
        image = assert_no_5xx(api.get(f"{url}/image"))
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    doomed = f"/v1/items/{quote(ODD_IDS[0], safe='')}"
    assert api.delete(doomed, headers=WRITE).status_code == 204
    assert_error(api.get(doomed), 404, ODD_IDS[0])


@pytest.mark.parametrize(
    "path",
    [
        "/v1/items/%00", "/v1/items/%ff%fe/image", "/v1/items/..%2F..%2Fmanifest.json/image",
        "/v1/items/%2E%2E/similar", f"/v1/items/{'x' * 5000}", "/v1/items/a%2Fb/similar?k=0",
        "/v1/items/a%2Fb/similar?filter=nope", "/v1/items/a%2Fb/similar?colour_weight=nan",
    ],
)  # fmt: skip
def test_odd_requests_are_4xx_with_a_reason(api: httpx.Client, path: str) -> None:
    response = assert_no_5xx(api.get(path))
    assert 400 <= response.status_code < 500 and response.json()["detail"], response.text


def test_wrong_key_is_answered_before_the_body_is_read(api: httpx.Client) -> None:
    """A 10 MB upload with a wrong key: the 403 arrives while the client has sent only its first 64 KiB."""
    url = urlsplit(str(api.base_url))
    part = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    for headers in ("X-API-Key: wrong-key\r\n", ""):
        with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
            sock.sendall(
                f"POST /v1/items HTTP/1.1\r\nHost: {url.hostname}\r\n{headers}"
                f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {10 * 2**20}\r\n\r\n".encode()
                + part
                + b"\xff" * 2**16
            )
            try:
                answer = sock.recv(4096).decode("latin-1")
            except TimeoutError:
                pytest.fail("no answer within 5 s: the server waits for the whole body before checking the key")
        assert answer.startswith(("HTTP/1.1 403", "HTTP/1.1 401")), answer
        no_traceback(answer)


def catalog_jpeg() -> bytes:
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith(".jpg")))


def add(api: httpx.Client, item_id: str, metadata: dict[str, str] | None = None) -> httpx.Response:
    data = {"id": item_id, "metadata": json.dumps(metadata or {})}
    return assert_no_5xx(api.post("/v1/items", data=data, files={"image": catalog_jpeg()}, headers=WRITE))


def test_metadata_is_bounded(api: httpx.Client) -> None:
    columns = len(api.get("/v1/info").json()["metadata_columns"])

    assert_error(add(api, "big", {f"c{n}": "x" * 2000 for n in range(5)}), 400, "metadata too large", "8,192")
    fill = {f"col{n}": "v" for n in range(64 - columns)}
    assert add(api, "fills", fill).status_code == 201
    assert_error(add(api, "one-more", {"yet_another": "v"}), 400, "too many metadata columns", "64")
    assert add(api, "same-columns", fill).status_code == 201  # existing columns stay usable
    assert_error(add(api, "too-wide", {f"w{n}": "v" for n in range(65)}), 400, "metadata")


def test_index_files_are_not_world_readable(api: httpx.Client, hostile_index: Path) -> None:
    assert add(api, "private").status_code == 201
    assert stat.S_IMODE(hostile_index.stat().st_mode) == 0o750
    for name in (DATABASE, MANIFEST):
        assert stat.S_IMODE((hostile_index / name).stat().st_mode) == 0o640, name
    uploads = [p for p in (hostile_index / UPLOADS).iterdir() if not p.is_symlink()]
    assert uploads and all(stat.S_IMODE(p.stat().st_mode) == 0o640 for p in uploads)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 3 MiB tmpfs, so the disk really fills up."""
    with small_tmpfs(tmp_path / "disk", "3m") as mount:
        yield mount


def fill(disk: Path, leave: int) -> Path:
    """Fill the disk but `leave` bytes."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as file:
        file.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.slow
def test_full_disk_is_507_and_leaves_nothing_half_written(
    small_disk: Path, hostile_index: Path, tmp_path: Path
) -> None:
    index = copy_index(hostile_index, small_disk / "idx")
    photo = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)), "PNG")
    statuses = set()
    with serve(index, tmp_path / "server.log", FASHIONREC_API_KEY=KEY) as api:
        before = api.get("/v1/health").json()["items"]
        added = 0
        # Room for nothing, for the image but not its database row, then for both.
        for n, leave in enumerate((0, 64 * 1024, *(len(photo) + 1024 * k for k in (2, 6, 10, 16, 32, 64)))):
            filler = fill(small_disk, leave)
            response = api.post("/v1/items", data={"id": f"full-{n}"}, files={"image": photo}, headers=WRITE)
            assert response.status_code in (201, 507), response.text  # 507 is the one 5xx wanted here
            statuses.add(response.status_code)
            if response.status_code == 507:
                assert_error(response, 507, "no space left", "nothing was saved")
                assert response.json()["error"] == "insufficient_storage"
                assert_error(api.get(f"/v1/items/full-{n}"), 404)
            else:
                added += 1
            assert not [p.name for p in index.rglob("*.tmp")]
            with sqlite3.connect(index / DATABASE) as db:
                images = db.execute("SELECT image FROM items WHERE image LIKE 'index:%'")
                stored = {image.rpartition("/")[2] for (image,) in images}
            files = {p.name for p in (index / UPLOADS).iterdir()}
            assert files - {UPLOAD_TOKEN} <= stored, "an uploaded file without its row"
            filler.unlink()
        assert 507 in statuses
        response = api.post("/v1/items", data={"id": "after"}, files={"image": photo}, headers=WRITE)
        assert response.status_code == 201, response.text
        assert api.get("/v1/health").json()["items"] == before + added + 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda index: (index / DATABASE).write_bytes(b"garbage, not a database" * 100), "unreadable index database"),
        (lambda index: edit_manifest(index, lambda m: m.pop("encoder")), "no encoder"),
        (lambda index: edit_manifest(index, lambda m: m["encoder"].update(dim=7)), "7-d"),
        (lambda index: edit_manifest(index, lambda m: m["encoder"].update(dim="big")), "dim"),
    ],
)
def test_a_damaged_index_is_one_clear_line_at_serve(
    hostile_index: Path, tmp_path: Path, damage: Callable[[Path], object], words: str
) -> None:
    index = copy_index(hostile_index, tmp_path / "idx")
    for extra in ("-wal", "-shm"):
        (index / f"{DATABASE}{extra}").unlink(missing_ok=True)
    damage(index)
    result = subprocess.run(
        [sys.executable, "-m", "fashionrec.cli", "serve", str(index), "--port", "1"],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO / "src")},
        timeout=120,
    )
    assert result.returncode != 0 and words in result.stderr + result.stdout, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def edit_manifest(index: Path, change: Callable[[dict], object]) -> None:
    manifest = json.loads((index / MANIFEST).read_text())
    change(manifest)
    (index / MANIFEST).write_text(json.dumps(manifest))


# ---- the web app ---------------------------------------------------------------------------------

APP = fashionrec.app.SCRIPT


@pytest.fixture
def page(hostile_index: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setattr(sys, "argv", [str(APP), str(hostile_index)])
    page = AppTest.from_file(str(APP), default_timeout=60)
    page.run()
    return page


def assert_page_fine(page: AppTest) -> None:
    assert not page.exception, [e.value for e in page.exception]
    for element in (*page.error, *page.markdown, *page.caption):
        no_traceback(str(element.value))


@pytest.mark.parametrize("name", list(HOSTILE_IMAGES))
def test_app_shows_hostile_uploads_and_products(page: AppTest, name: str) -> None:
    page.sidebar.file_uploader(key="upload").upload(name, HOSTILE_IMAGES[name](), "application/octet-stream")
    page.run()
    assert_page_fine(page)
    assert page.session_state["query"].title == "Your photo"
    with Image.open(io.BytesIO(page.session_state["query"].image)) as shown:
        assert shown.mode == "RGB"
    item_id = name.partition(".")[0]  # the catalog product itself as the query: its picture and its look-alikes
    page.session_state["query"] = Query(title=item_id, item_id=item_id)
    page.run()
    assert_page_fine(page)
    assert len(page.image) >= 2  # the query and its results: no "image not available" for any of them
    assert not [c for c in page.caption if "image not available" in str(c.value)]


# ---- in the browser: nothing leaves localhost ------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"chromium not found at {CHROMIUM}: install it with `make browser`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def offline_page(browser: Browser, outside: list[str]) -> Page:
    """A page whose requests beyond localhost are recorded and aborted, as on a machine without internet."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.set_default_timeout(60_000)

    def route(request_route: Route) -> None:
        host = urlsplit(request_route.request.url).hostname
        if request_route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            request_route.continue_()
        else:
            outside.append(request_route.request.url)
            request_route.abort()

    page.route("**/*", route)
    return page


@pytest.mark.browser
def test_docs_render_offline(api: httpx.Client, browser: Browser) -> None:
    outside: list[str] = []
    page = offline_page(browser, outside)
    page.goto(f"{api.base_url}/docs")
    page.locator(".opblock").first.wait_for()
    assert page.locator(".opblock").count() >= 8
    assert outside == []
    assert_error(api.get("/redoc"), 404)  # ReDoc is off: it would fetch its logo from cdn.redoc.ly


@pytest.mark.browser
@pytest.mark.slow
def test_app_makes_no_request_beyond_localhost(hostile_index: Path, browser: Browser, tmp_path: Path) -> None:
    port = free_port()
    with open(tmp_path / "app.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fashionrec.cli", "app", str(hostile_index), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        outside: list[str] = []
        page = offline_page(browser, outside)
        deadline = time.monotonic() + 60
        while True:
            try:
                page.goto(f"http://127.0.0.1:{port}")
                break
            except Exception:  # the server is still starting
                assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "app.log").read_text()
                time.sleep(0.5)
        page.get_by_role("heading", name="Find your look-alike").wait_for()
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(
            files=[{"name": "grey16.png", "mimeType": "image/png", "buffer": HOSTILE_IMAGES["grey16.png"]()}]
        )
        page.get_by_role("heading", name="Your photo").wait_for()
        page.get_by_text("Similar products").wait_for()
        page.wait_for_timeout(2000)  # icons, fonts and pictures load
        no_traceback(page.inner_text("body"))
        assert outside == []
    finally:
        process.terminate()
        process.wait(timeout=20)
