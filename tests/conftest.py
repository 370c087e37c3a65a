"""Shared fixtures: small real catalogs sampled from the shared Kaggle zip, and indexes built from them.

The zip is read in place from ../shared/data (or $FASHIONREC_DATA); sampled images are written to
pytest's temporary folders only, never into the repository.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from fashionrec.build import BuildReport, build_index
from fashionrec.catalog import load_catalog
from fashionrec.encoders import Encoder, load_encoder
from fashionrec.images import decode
from fashionrec.index import MANIFEST, IndexStore, write_json_atomic
from fashionrec.stores import open_store

REPO = Path(__file__).resolve().parents[1]
SHARED_ZIP = Path(
    os.environ.get("FASHIONREC_DATA", REPO.parent / "shared" / "data" / "fashion-product-images-small.zip")
)
SAMPLE_SIZE = 300
# Where the session index keeps its vectors: FASHIONREC_TEST_STORE=milvus for embedded Milvus Lite,
# milvus-server for a Milvus standalone server the session starts (`make test` reruns the search and API
# tests both ways); unset, in files (the default store).
TEST_STORE = os.environ.get("FASHIONREC_TEST_STORE", "") or "files"
if TEST_STORE not in ("files", "milvus", "milvus-server"):
    raise ValueError(f"FASHIONREC_TEST_STORE={TEST_STORE!r}: use files, milvus (Lite) or milvus-server")
# FASHIONREC_TEST_RUNNER=ray: the build tests (tests/test_build.py) build on a local Ray (`make test` reruns them).
TEST_RUNNER = os.environ.get("FASHIONREC_TEST_RUNNER", "") or "local"
if TEST_RUNNER not in ("local", "ray"):
    raise ValueError(f"FASHIONREC_TEST_RUNNER={TEST_RUNNER!r}: use local or ray")


def read_styles() -> tuple[list[str], list[list[str]]]:
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        rows = list(csv.reader(io.StringIO(archive.read("styles.csv").decode("utf-8"))))
    return rows[0], rows[1:]


def write_catalog(folder: Path, header: list[str], rows: list[list[str]]) -> Path:
    """A Kaggle-layout folder holding the given rows and their real images from the shared zip."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        names = set(archive.namelist())
        for row in rows:
            member = f"images/{row[0]}.jpg"
            if member in names:
                (folder / member).write_bytes(archive.read(member))
    with open(folder / "styles.csv", "w", newline="") as file:
        csv.writer(file).writerows([header, *rows])
    return folder


def damage_images(images: Path, rows: list[list[str]]) -> None:
    """Rows 1 to 4 of a written catalog get the bad files a build must report per item: an empty file, a
    truncated JPEG, text named .jpg, and a missing image."""
    good = (images / f"{rows[0][0]}.jpg").read_bytes()
    (images / f"{rows[1][0]}.jpg").write_bytes(b"")
    (images / f"{rows[2][0]}.jpg").write_bytes(good[: len(good) // 3])
    (images / f"{rows[3][0]}.jpg").write_text("this is not a picture")
    (images / f"{rows[4][0]}.jpg").unlink()


def side_by_side(left: Path, right: Path) -> bytes:
    """One photo holding two products, as a shopper's shot of two garments would."""
    images = [decode(path.read_bytes(), path.name) for path in (left, right)]
    canvas = Image.new("RGB", (images[0].width + images[1].width, max(i.height for i in images)), "white")
    canvas.paste(images[0], (0, 0))
    canvas.paste(images[1], (images[0].width, 0))
    buffer = io.BytesIO()
    canvas.resize((canvas.width * 3, canvas.height * 3), Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def copy_index(index: Path, to: Path) -> Path:
    """A copy of an index directory, made by another process. Reading an SQLite file in this process while its
    connections are open would drop their POSIX locks (closing any descriptor of a file does), and SQLite would
    then delete the shared -shm file under them: later opens fail with SQLITE_IOERR_SHORT_READ.

    A copy of an index on a Milvus server gets a collection of its own, so writing to it leaves the original's alone.
    """
    to.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(index), str(to)], check=True)
    uri = json.loads((to / MANIFEST).read_text()).get("store", "files")
    if re.match(r"milvus://[^?]*:\d+(\?|$)", uri):
        own_collection(to)
    return to


def own_collection(index: Path) -> None:
    """Copy the items of the collection an index names into a new collection, and point the index at it."""
    records = IndexStore.open(index)
    uri = re.sub(r"collection=\w+", f"collection=copy_{secrets.token_hex(8)}", records.store.uri)
    copy = open_store(uri, index, records.dim)
    try:
        for items, vectors, colours in records.load():
            copy.upsert([item.id for item in items], vectors, colours, [item.metadata for item in items])
    finally:
        copy.close()
        records.close()
    write_json_atomic(index / MANIFEST, {**records.manifest, "store": uri})


@contextmanager
def small_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` mounted on `mount`, so a disk really fills up; skips where mounting is not allowed."""
    mount.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def free_port() -> int:
    """A port nothing listens on now, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def app_answers(url: str) -> bool:
    """Whether a Streamlit app at `url` answers its health check with "ok"."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as answer:
            return answer.read() == b"ok"
    except OSError:
        return False


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run `fashionrec ARGS` as a user would, in a wide terminal so tables are not wrapped."""
    return subprocess.run(
        [sys.executable, "-m", "fashionrec.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def sample_rows(count: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """`count` catalog rows that have images, drawn at random but always the same."""
    header, rows = read_styles()
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        names = set(archive.namelist())
    rows = [r for r in rows if f"images/{r[0]}.jpg" in names]
    return header, random.Random(seed).sample(rows, count)


@pytest.fixture(scope="session", autouse=True)
def shared_data() -> Path:
    if not SHARED_ZIP.is_file():
        pytest.exit(f"test data missing: {SHARED_ZIP} (set FASHIONREC_DATA)", returncode=2)
    return SHARED_ZIP


@pytest.fixture(scope="session")
def sample_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kaggle-layout folder of SAMPLE_SIZE real products."""
    header, rows = sample_rows(SAMPLE_SIZE)
    return write_catalog(tmp_path_factory.mktemp("catalog"), header, rows)


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return load_encoder()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus standalone server for the session ("127.0.0.1:PORT"), its binaries and data in a temp folder
    (half a gigabyte, removed at the end)."""
    from fashionrec.stores.milvus_server import local_server

    base = tmp_path_factory.mktemp("milvus-server")
    with local_server(base) as address:
        yield address
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def test_store(request: pytest.FixtureRequest) -> str:
    """The store URI the session index is built with (see TEST_STORE)."""
    if TEST_STORE == "milvus-server":
        return f"milvus://{request.getfixturevalue('milvus_server')}"
    return {"files": "files", "milvus": "milvus://milvus.db"}[TEST_STORE]


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[None]:
    """One local Ray for the whole session's in-process builds: a runner uses the Ray it finds running and
    leaves it up, and each start is a chance to meet Ray's start-up time-out on busy cores."""
    runner = pytest.importorskip("fashionrec.runners.ray")
    with runner.ray_session(None):
        yield


@pytest.fixture(scope="session")
def ray_if_chosen(request: pytest.FixtureRequest) -> None:
    """With FASHIONREC_TEST_RUNNER=ray, the session's Ray for the build suite; nothing otherwise."""
    if TEST_RUNNER == "ray":
        request.getfixturevalue("ray_instance")


@pytest.fixture(scope="session")
def built_index(
    tmp_path_factory: pytest.TempPathFactory,
    sample_catalog: Path,
    encoder: Encoder,
    test_store: str,
    ray_if_chosen: None,
) -> tuple[Path, BuildReport]:
    out = tmp_path_factory.mktemp("index") / "idx"
    catalog = load_catalog(sample_catalog)
    report = build_index(catalog, out, encoder, workers=2, progress=False, store=test_store, runner=TEST_RUNNER)
    return out, report


@pytest.fixture(scope="session")
def catalog_photo(sample_catalog: Path) -> Path:
    """The photo of one product of the sample catalog, as a shopper would upload it."""
    return sorted((sample_catalog / "images").glob("*.jpg"))[0]
