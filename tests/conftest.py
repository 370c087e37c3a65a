"""Shared fixtures: small real catalogs sampled from the shared Kaggle zip, and indexes built from them.

The zip is read in place from ../shared/data (or $FASHIONREC_DATA); sampled images are written to
pytest's temporary folders only, never into the repository.
"""

from __future__ import annotations

import csv
import io
import os
import random
import subprocess
import sys
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

REPO = Path(__file__).resolve().parents[1]
SHARED_ZIP = Path(
    os.environ.get("FASHIONREC_DATA", REPO.parent / "shared" / "data" / "fashion-product-images-small.zip")
)
SAMPLE_SIZE = 300
# FASHIONREC_TEST_STORE=milvus: the session index keeps its vectors in embedded Milvus Lite (`make test` reruns
# the search and API tests that way); unset, in files (the default store).
TEST_STORES = {"": "files", "files": "files", "milvus": "milvus://milvus.db"}
TEST_STORE = TEST_STORES[os.environ.get("FASHIONREC_TEST_STORE", "")]


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
    then delete the shared -shm file under them: later opens fail with SQLITE_IOERR_SHORT_READ."""
    to.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(index), str(to)], check=True)
    return to


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
def built_index(
    tmp_path_factory: pytest.TempPathFactory, sample_catalog: Path, encoder: Encoder
) -> tuple[Path, BuildReport]:
    out = tmp_path_factory.mktemp("index") / "idx"
    report = build_index(load_catalog(sample_catalog), out, encoder, workers=2, progress=False, store=TEST_STORE)
    return out, report


@pytest.fixture(scope="session")
def catalog_photo(sample_catalog: Path) -> Path:
    """The photo of one product of the sample catalog, as a shopper would upload it."""
    return sorted((sample_catalog / "images").glob("*.jpg"))[0]
