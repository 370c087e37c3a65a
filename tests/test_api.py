"""The REST API as a shop uses it: every endpoint and error path in-process (FastAPI's TestClient over the
real app, index and model), and the real server (`fashionrec serve`, real HTTP) where the server matters:
keys, live updates that survive a restart, several worker processes, concurrent reads during writes, and a
schemathesis fuzz from the API's own OpenAPI schema.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import anyio.to_thread
import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies
from schemathesis import GenerationMode

from fashionrec.api import Keys, create_app
from fashionrec.build import BuildReport
from fashionrec.index import FORMAT_VERSION

from conftest import TEST_STORE, copy_index, free_port, side_by_side

KEY = "test-write-key-0123456789"
READ_KEY = "test-read-key-0123456789"
WRITE = {"X-API-Key": KEY}


@contextmanager
def serve(index: Path, log: Path, *args: str, **env: str) -> Iterator[httpx.Client]:
    """Run `fashionrec serve INDEX` until the block ends; yields a client bound to it."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FASHIONREC_")} | env
    environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    command = [sys.executable, "-m", "fashionrec.cli", "serve", str(index), "--port", str(port), "--no-access-log"]
    with open(log, "ab") as output:
        process = subprocess.Popen([*command, *args], env=environ, stdout=output, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"server exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server did not start: {log.read_text()[-3000:]}"
            try:
                if client.get("/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=30)


def index_copy(built_index: tuple[Path, BuildReport], folder: Path) -> Path:
    return copy_index(built_index[0], folder / "idx")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, built_index: tuple[Path, BuildReport]) -> Iterator[httpx.Client]:
    """The app in-process, with a write key, over a copy of the session index (the tests add and delete items)."""
    index = index_copy(built_index, tmp_path_factory.mktemp("api"))
    with TestClient(create_app(index, Keys(write=KEY))) as client:
        yield client


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, built_index: tuple[Path, BuildReport]) -> Iterator[httpx.Client]:
    """A real server with a write key, over a copy of the session index."""
    folder = tmp_path_factory.mktemp("server")
    with serve(index_copy(built_index, folder), folder / "server.log", FASHIONREC_API_KEY=KEY) as client:
        yield client


@pytest.fixture(scope="module")
def photos(sample_catalog: Path) -> list[Path]:
    return sorted((sample_catalog / "images").glob("*.jpg"))


def upload(path: Path | bytes, name: str = "photo.jpg") -> dict[str, tuple[str, bytes, str]]:
    data = path if isinstance(path, bytes) else path.read_bytes()
    return {"image": (name, data, "image/jpeg")}


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: only the header, as a decompression bomb would start."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    for word in words:
        assert word in body["detail"], body


def test_read_endpoints(api: httpx.Client, photos: list[Path]) -> None:
    assert api.get("/v1/health").json()["status"] == "ok"
    info = api.get("/v1/info").json()
    assert (
        info["encoder"].startswith("efficientnet-lite0@")
        and info["items"] == 300
        and info["format_version"] == FORMAT_VERSION
    )
    assert "index" not in info and "catalog" not in info  # no server paths

    photo = photos[0]
    found = api.post("/v1/search", params={"k": 4}, files=upload(photo)).json()["results"]
    assert [m["rank"] for m in found] == [1, 2, 3, 4] and found[0]["id"] == photo.stem
    assert found[0]["score"] > 0.999 and found[0]["image_url"] == f"/v1/items/{photo.stem}/image"

    item = api.get(f"/v1/items/{photo.stem}").json()
    assert item["id"] == photo.stem and item["metadata"]["productDisplayName"]
    image = api.get(item["image_url"])
    assert image.status_code == 200 and image.content == photo.read_bytes()
    assert image.headers["content-type"] == "image/jpeg" and image.headers["x-content-type-options"] == "nosniff"

    similar = api.get(f"/v1/items/{photo.stem}/similar", params={"k": 7}).json()["results"]
    by_colour = api.get(f"/v1/items/{photo.stem}/similar", params={"k": 7, "colour_weight": 0.8}).json()["results"]
    assert len(by_colour) == 7 and photo.stem not in {m["id"] for m in by_colour}
    assert len(similar) == 7 and photo.stem not in {m["id"] for m in similar}
    scores = [m["score"] for m in similar]
    assert scores == sorted(scores, reverse=True)
    assert "openapi" in api.get("/openapi.json").json() and api.get("/docs").status_code == 200


def test_a_request_hops_to_a_worker_thread_at_most_once(
    api: httpx.Client, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each hop waits for one of the few worker threads (one per core): a plain `def` dependency or route
    costs one more, and a similar-items request took four. Counted here, so a new `def` shows up."""
    hops: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(getattr(func, "__name__", repr(func)))
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    item = photos[0].stem
    requests = {
        "similar": lambda: api.get(f"/v1/items/{item}/similar", params={"k": 3}),
        "item": lambda: api.get(f"/v1/items/{item}"),
        "health": lambda: api.get("/v1/health"),
        "info": lambda: api.get("/v1/info"),
        "page": lambda: api.get("/v1/items", params={"limit": 2}),
        "words": lambda: api.get("/v1/search", params={"q": "shirt"}),
        "photo": lambda: api.post("/v1/search", files=upload(photos[1])),
        "recommend": lambda: api.post("/v1/recommend", json={"positive": [item]}),
        "unknown item": lambda: api.get("/v1/items/no-such-item/similar"),
    }
    counts = {}
    for name, request in requests.items():
        hops.clear()
        response = request()
        assert response.status_code == (404 if name == "unknown item" else 200), (name, response.text)
        counts[name] = len(hops)
    assert counts == {name: 0 if name in ("item", "health") else 1 for name in requests}  # no work, no hop


def test_search_a_crop_box_of_the_photo(api: httpx.Client, photos: list[Path]) -> None:
    photo = side_by_side(photos[3], photos[4])
    right = api.post("/v1/search", params={"k": 1, "crop": "0.5,0,1,1"}, files=upload(photo, "two.jpg")).json()
    assert right["results"][0]["id"] == photos[4].stem
    for bad in ("0.5,0,0.5,1", "a,b,c,d", "0,0,1"):
        assert_error(api.post("/v1/search", params={"crop": bad}, files=upload(photo, "two.jpg")), 400, "crop box")
    cut_out = api.post("/v1/search", params={"k": 2, "isolate": "u2netp"}, files=upload(photo, "two.jpg"))
    assert cut_out.status_code == 200 and len(cut_out.json()["results"]) == 2
    assert_error(api.post("/v1/search", params={"isolate": "magic"}, files=upload(photo, "two.jpg")), 400, "isolate")


def test_filters_return_k_matching_items(api: httpx.Client, photos: list[Path]) -> None:
    wanted = {"gender": {"Men"}, "articleType": {"Shirts", "Tshirts"}}
    params = {"k": 6, "filter": ["gender=men", "articleType=Shirts", "articletype:TSHIRTS"]}  # any case; old `:` too
    for found in (
        api.get(f"/v1/items/{photos[1].stem}/similar", params=params).json()["results"],
        api.post("/v1/search", params=params, files=upload(photos[2])).json()["results"],
    ):
        assert len(found) == 6
        assert all(m["metadata"][column] in values for m in found for column, values in wanted.items())


def test_bad_uploads_are_4xx_with_a_reason(api: httpx.Client, photos: list[Path]) -> None:
    jpeg = photos[0].read_bytes()
    cases = [
        (b"", 422, "empty file"),
        (b"just some text, not a picture", 422, "not an image"),
        (b"%PDF-1.4\n" + os.urandom(2000), 422, "not an image"),
        (jpeg[: len(jpeg) // 2], 422, "truncated"),
        (png_header(12_000, 12_000), 413, "image too large"),
        (png_header(8_000, 7_000), 413, "image too large"),
        (b"\xff" * (10 * 2**20 + 1), 413, "too large"),
    ]
    for data, status, words in cases:
        assert_error(api.post("/v1/search", files=upload(data, "fine.jpg")), status, words)
    assert_error(api.post("/v1/search", content=b"x" * (12 * 2**20)), 413, "too large")
    part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    chunked = (part if n < 0 else b"x" * 2**20 for n in range(-1, 12))  # no Content-Length: cut off while streaming
    multipart = {"content-type": "multipart/form-data; boundary=b"}
    assert_error(api.post("/v1/search", content=chunked, headers=multipart), 413, "too large")
    assert_error(api.post("/v1/search"), 400, "image")  # no file
    assert api.get("/v1/health").status_code == 200  # and the server is still up


def test_bad_queries(api: httpx.Client, photos: list[Path]) -> None:
    item = photos[0].stem
    for k in ("0", "101", "-3", "many", ""):
        assert_error(api.get(f"/v1/items/{item}/similar", params={"k": k}), 400, "k")
    assert_error(api.post("/v1/search", params={"k": 0}, files=upload(photos[0])), 400, "k")
    assert_error(api.get(f"/v1/items/{item}/similar", params={"filter": "colour=Red"}), 422, "unknown filter column")
    assert_error(api.get(f"/v1/items/{item}/similar", params={"colour_weight": 1.5}), 400, "colour_weight")
    assert_error(api.get(f"/v1/items/{item}/similar", params={"filter": "gender"}), 422, "COLUMN=VALUE")
    nobody = api.get(f"/v1/items/{item}/similar", params={"filter": "gender=Nobody"})  # not a silent empty result
    assert_error(nobody, 422, "no item has gender='Nobody'")
    assert nobody.json()["error"] == "invalid_filter"
    assert_error(api.get(f"/v1/items/{item}/similar", params={"filter": "gender=Mne"}), 422, "did you mean 'Men'")
    for path in ("/v1/items/99999999", "/v1/items/99999999/image", "/v1/items/99999999/similar"):
        assert_error(api.get(path), 404, "'99999999' is not in the index")
    for sneaky in ("..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..", "images%2F" + item + ".jpg"):
        assert api.get(f"/v1/items/{sneaky}/image").status_code == 404  # ids are looked up, never used as paths
    assert_error(api.get("/v1/nothing-here"), 404)
    assert_error(api.put(f"/v1/items/{item}"), 405)


def test_writes_need_the_key(api: httpx.Client, photos: list[Path]) -> None:
    form = {"id": "keyless", "metadata": "{}"}
    assert_error(api.post("/v1/items", data=form, files=upload(photos[3])), 401, "X-API-Key")
    assert_error(api.post("/v1/items", data=form, files=upload(photos[3]), headers={"X-API-Key": "guess"}), 403)
    assert_error(api.delete(f"/v1/items/{photos[3].stem}"), 401)
    assert_error(api.delete(f"/v1/items/{photos[3].stem}", headers={"X-API-Key": KEY[:-1]}), 403, "wrong API key")
    assert api.get(f"/v1/items/{photos[3].stem}").status_code == 200 and api.get("/v1/items/keyless").status_code == 404


def test_add_and_delete_live(api: httpx.Client, photos: list[Path]) -> None:
    photo = photos[4]
    metadata = '{"gender": "Unisex", "articleType": "Scarves", "productDisplayName": "API scarf"}'
    added = api.post("/v1/items", data={"id": "api-scarf-1", "metadata": metadata}, files=upload(photo), headers=WRITE)
    assert added.status_code == 201, added.text
    assert added.headers["location"] == "/v1/items/api-scarf-1" and added.json()["metadata"]["articleType"] == "Scarves"
    assert api.get("/v1/items/api-scarf-1/image").content == photo.read_bytes()
    found = api.post("/v1/search", params={"k": 3, "filter": "articleType=Scarves"}, files=upload(photo)).json()
    assert found["results"][0]["id"] == "api-scarf-1"
    assert api.get("/v1/info").json()["items"] == 301

    again = api.post("/v1/items", data={"id": "api-scarf-1"}, files=upload(photo), headers=WRITE)
    assert_error(again, 409, "already in the index")
    bad = [
        ({"id": "../../etc/passwd"}, upload(photo), 400, "id"),
        ({"id": ""}, upload(photo), 400, "id"),
        ({"id": "x2", "metadata": "[1, 2]"}, upload(photo), 400, "JSON object"),
        ({"id": "x3", "metadata": '{"gender": 3}'}, upload(photo), 400, "gender"),
        ({"id": "x4", "metadata": "{not json"}, upload(photo), 400, "JSON"),
        ({"id": "x5"}, upload(b"GIF89a broken"), 422, "uploaded image"),
        ({"id": "x7", "metadata": json.dumps({f"c{n}": "v" for n in range(101)})}, upload(photo), 400, "metadata"),
        ({"id": "x6"}, upload(png_header(9_000, 9_000)), 413, "too large"),
    ]
    for form, files, status, words in bad:
        assert_error(api.post("/v1/items", data=form, files=files, headers=WRITE), status, words)

    assert api.delete("/v1/items/api-scarf-1", headers=WRITE).status_code == 204
    assert_error(api.delete("/v1/items/api-scarf-1", headers=WRITE), 404)
    assert_error(api.get("/v1/items/api-scarf-1/image"), 404)
    gone = api.post("/v1/search", params={"k": 3}, files=upload(photo)).json()["results"]
    assert "api-scarf-1" not in {m["id"] for m in gone} and api.get("/v1/info").json()["items"] == 300


def test_items_are_listed_a_page_at_a_time(api: httpx.Client) -> None:
    first = api.get("/v1/items", params={"limit": 2}).json()
    assert first["total"] == 300 and first["offset"] == 0 and first["limit"] == 2 and len(first["items"]) == 2
    assert set(first["items"][0]) == {"id", "metadata", "image_url", "photo_urls"}
    pages = [api.get("/v1/items", params={"offset": start, "limit": 128}).json() for start in range(0, 300, 128)]
    ids = [item["id"] for page in pages for item in page["items"]]
    assert len(ids) == len(set(ids)) == 300 and [len(p["items"]) for p in pages] == [128, 128, 44]
    assert api.get("/v1/items", params={"offset": 300}).json()["items"] == []
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"offset": "x"}):
        assert_error(api.get("/v1/items", params=bad), 400)


def test_patch_changes_metadata_live(api: httpx.Client, photos: list[Path]) -> None:
    item = photos[8].stem
    before = api.get(f"/v1/items/{item}").json()["metadata"]
    change = {"metadata": {"baseColour": "Ultraviolet", "season": None, "label": "sale"}}
    assert_error(api.patch(f"/v1/items/{item}", json=change), 401)
    updated = api.patch(f"/v1/items/{item}", json=change, headers=WRITE)
    assert updated.status_code == 200, updated.text
    expected = {k: v for k, v in before.items() if k != "season"} | {"baseColour": "Ultraviolet", "label": "sale"}
    assert updated.json()["metadata"] == expected == api.get(f"/v1/items/{item}").json()["metadata"]
    found = api.get(f"/v1/items/{photos[9].stem}/similar", params={"filter": "baseColour=ultraviolet"}).json()
    assert [m["id"] for m in found["results"]] == [item]  # the next search filters on the new value
    bad = [
        ("/v1/items/99999999", {"metadata": {}}, 404, "not in the index"),
        (f"/v1/items/{item}", {"metadata": {"gender": 3}}, 400, "gender"),
        (f"/v1/items/{item}", {"metadata": {"": "x"}}, 400, "metadata"),
        (f"/v1/items/{item}", {"colour": "red"}, 400, "metadata"),
        (f"/v1/items/{item}", {"metadata": {f"c{n}": "v" for n in range(65)}}, 400, "metadata"),
        (f"/v1/items/{item}", {"metadata": {f"c{n}": "v" for n in range(60)}}, 400, "too many metadata columns"),
    ]
    for path, body, status, words in bad:
        assert_error(api.patch(path, json=body, headers=WRITE), status, words)
    restore = {"metadata": {"label": None, **before}}
    assert api.patch(f"/v1/items/{item}", json=restore, headers=WRITE).json()["metadata"] == before


def test_cors_is_off_unless_origins_are_set(api: httpx.Client, built_index: tuple[Path, BuildReport]) -> None:
    origin = {"Origin": "https://shop.example"}
    preflight = origin | {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    assert "access-control-allow-origin" not in api.get("/v1/health", headers=origin).headers
    with TestClient(create_app(built_index[0], cors_origins=["https://shop.example"])) as client:
        allowed = client.options("/v1/search", headers=preflight)
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://shop.example"
        assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
        answer = client.get("/v1/items/nope", headers=origin)  # errors carry the header too: the page can read them
        assert answer.status_code == 404 and answer.headers["access-control-allow-origin"] == "https://shop.example"
        other = client.get("/v1/health", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


def test_concurrent_reads_during_writes_stay_consistent(server: httpx.Client, photos: list[Path]) -> None:
    api = server

    def read(n: int) -> list[dict]:
        if n % 3 == 0:
            response = api.post("/v1/search", params={"k": 5}, files=upload(photos[n % 20]))
        else:
            response = api.get(f"/v1/items/{photos[n % 40].stem}/similar", params={"k": 5})
        assert response.status_code == 200, response.text
        return response.json()["results"]

    def write(n: int) -> None:
        item_id = f"concurrent-{n}"
        added = api.post("/v1/items", data={"id": item_id}, files=upload(photos[50 + n]), headers=WRITE)
        assert added.status_code == 201, added.text
        assert api.delete(f"/v1/items/{item_id}", headers=WRITE).status_code == 204

    with ThreadPoolExecutor(8) as pool:
        writes = [pool.submit(write, n) for n in range(4)]
        results = list(pool.map(read, range(60)))
        for done in writes:
            done.result()
    for found in results:
        assert len(found) == 5 and [m["rank"] for m in found] == [1, 2, 3, 4, 5]
        assert len({m["id"] for m in found}) == 5
    assert api.get("/v1/info").json()["items"] == 300


@pytest.mark.slow
def test_updates_survive_a_restart(tmp_path: Path, built_index: tuple[Path, BuildReport], photos: list[Path]) -> None:
    index = index_copy(built_index, tmp_path)
    photo, removed = photos[5], photos[6].stem
    with serve(index, tmp_path / "log", FASHIONREC_API_KEY=KEY) as api:
        form = {"id": "durable-1", "metadata": '{"gender": "Women"}'}
        assert api.post("/v1/items", data=form, files=upload(photo), headers=WRITE).status_code == 201
        assert api.delete(f"/v1/items/{removed}", headers=WRITE).status_code == 204
    assert [p.parent.name for p in index.glob("uploads/*")] == ["uploads"]  # one file, inside the index
    with serve(index, tmp_path / "log") as api:
        assert api.get("/v1/items/durable-1").json()["metadata"] == {"gender": "Women"}
        assert api.get("/v1/items/durable-1/image").content == photo.read_bytes()
        assert_error(api.get(f"/v1/items/{removed}"), 404)
        found = api.post("/v1/search", params={"k": 2}, files=upload(photos[6])).json()["results"]
        assert removed not in {m["id"] for m in found}
        assert api.get("/v1/info").json()["items"] == 300
        assert_error(api.delete("/v1/items/durable-1", headers=WRITE), 403, "FASHIONREC_API_KEY")  # no key here


@pytest.mark.slow
def test_read_key_and_disabled_writes(
    tmp_path: Path, built_index: tuple[Path, BuildReport], photos: list[Path]
) -> None:
    key_file = tmp_path / "read.key"
    key_file.write_text(READ_KEY + "\n")
    env = {
        "FASHIONREC_READ_KEY_FILE": str(key_file),
        "FASHIONREC_CORS_ORIGINS": "https://shop.example, https://b.example",
    }
    index = index_copy(built_index, tmp_path)  # a copy: a Milvus Lite index opens in one process at a time
    with serve(index, tmp_path / "log", **env) as api:
        allowed = api.get("/v1/health", headers={"Origin": "https://b.example"})  # CORS from the environment
        assert allowed.headers["access-control-allow-origin"] == "https://b.example"
        item = photos[0].stem
        assert_error(api.get(f"/v1/items/{item}"), 401)
        assert_error(api.get(f"/v1/items/{item}", headers={"X-API-Key": "nope"}), 403)
        assert api.get(f"/v1/items/{item}", headers={"X-API-Key": READ_KEY}).status_code == 200
        assert api.get("/v1/health").status_code == 200  # always open, for load balancers
        refused = api.post("/v1/items", data={"id": "z"}, files=upload(photos[0]), headers={"X-API-Key": READ_KEY})
        assert_error(refused, 403, "FASHIONREC_API_KEY")


@pytest.mark.slow
@pytest.mark.skipif(TEST_STORE == "milvus", reason="Milvus Lite opens in one process: workers need a server")
def test_workers_see_each_others_writes(
    tmp_path: Path, built_index: tuple[Path, BuildReport], photos: list[Path]
) -> None:
    index = index_copy(built_index, tmp_path)
    with serve(index, tmp_path / "log", "--workers", "2", FASHIONREC_API_KEY=KEY) as api:
        added = api.post("/v1/items", data={"id": "shared-1"}, files=upload(photos[7]), headers=WRITE)
        assert added.status_code == 201
        for _ in range(12):  # new connections land on either worker
            with httpx.Client(base_url=str(api.base_url), timeout=30) as fresh:
                assert fresh.get("/v1/items/shared-1").status_code == 200
                assert fresh.get("/v1/info").json()["items"] == 301
        assert api.delete("/v1/items/shared-1", headers=WRITE).status_code == 204
        for _ in range(12):
            with httpx.Client(base_url=str(api.base_url), timeout=30) as fresh:
                assert fresh.get("/v1/items/shared-1").status_code == 404


@pytest.mark.slow
def test_serve_refuses_a_bad_setup_in_one_line(tmp_path: Path, built_index: tuple[Path, BuildReport]) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    index = index_copy(built_index, tmp_path / "copy")  # a copy: a Milvus Lite index opens in one process at a time
    cases = [
        ((str(tmp_path),), {}, "not a fashionrec index"),
        ((str(index),), {"FASHIONREC_API_KEY_FILE": str(tmp_path / "missing.key")}, "missing.key"),
    ]
    for args, extra, words in cases:
        result = subprocess.run(
            [sys.executable, "-m", "fashionrec.cli", "serve", *args], env=env | extra, capture_output=True, text=True
        )
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def api_schema(server: httpx.Client) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")


@pytest.mark.slow
def test_fuzz_from_openapi_schema_never_5xx(api_schema: schemathesis.BaseSchema) -> None:
    """Valid and invalid requests for every operation of the schema, with the write key (deletes included)."""
    calls: Counter[str] = Counter()
    for operation in (result.ok() for result in api_schema.get_all_operations()):
        modes = [operation.as_strategy(mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=strategies.one_of(modes))
        def never_5xx(case: schemathesis.Case) -> None:
            response = case.call(headers=WRITE, timeout=30)
            calls[f"{case.method} {case.path}"] += 1
            assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text)
            if response.status_code >= 400:
                assert set(response.json()) == {"error", "detail"}, response.text

        never_5xx()
    assert len(calls) == 18 and sum(calls.values()) > 150, calls  # every operation was exercised
