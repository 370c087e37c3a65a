"""Index stage: the on-disk store of one catalog's items, vectors and problems.

An index is a directory that describes itself:
- `manifest.json`: format version, encoder spec, catalog source, counts (replaced atomically);
- `index.sqlite`: items (id, image, content hash, metadata JSON, vector BLOB) and problems;
- `uploads/`: images of products added one by one (the REST API), named by content hash, never by id.

The directory is created 0o750 and every file fashionrec writes in it 0o640 (whatever the umask):
catalog metadata and uploaded photos are readable by the owner's group, never by every user.

SQLite (in WAL mode) makes every batch of vectors one transaction: a build killed at any moment
leaves every committed batch intact, and the next run resumes from there. No pickle anywhere.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashionrec.catalog import Item, Problem
from fashionrec.colour import COLOUR_DIM

FORMAT_VERSION = 2  # 2: a colour vector per item
MANIFEST = "manifest.json"
DATABASE = "index.sqlite"
UPLOADS = "uploads"
UPLOADED = "index:"  # prefix of the image of an added item: a file in the index directory, not in the catalog
UPLOAD_NAME = re.compile(r"[0-9a-f]{32}-[0-9a-f]{16}")  # what add_item names an upload: content hash-token
DIR_MODE = 0o750
FILE_MODE = 0o640
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    image TEXT NOT NULL,
    image_hash TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL,
    colour BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS generation (value INTEGER NOT NULL);
INSERT INTO generation SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM generation);
CREATE TRIGGER IF NOT EXISTS item_added AFTER INSERT ON items BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER IF NOT EXISTS item_removed AFTER DELETE ON items BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER IF NOT EXISTS item_changed AFTER UPDATE OF vector ON items
    BEGIN UPDATE generation SET value = value + 1; END;
CREATE TABLE IF NOT EXISTS problems (
    item TEXT NOT NULL,
    message TEXT NOT NULL,
    action TEXT NOT NULL
);
"""


class IndexStoreError(RuntimeError):
    """An index directory that cannot be used (missing, other format, other encoder)."""


class StorageFullError(RuntimeError):
    """The disk (or quota) holding the index is full: nothing was written (an API answers 507)."""


class DuplicateItemError(ValueError):
    """An item id that is already in the index."""

    def __str__(self) -> str:
        return f"item {self.args[0]!r} is already in the index"


@dataclass(frozen=True)
class StoredItem:
    """An indexed product as the index returns it."""

    id: str
    image: str
    metadata: dict[str, str]
    image_hash: str = ""  # the same image under several ids is one product shown once (search collapse)


def make_dir(path: Path) -> None:
    """Create a directory of the index with DIR_MODE (explicitly: the umask does not decide)."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON to a temp file and rename it over the target, so readers see old or new, never half."""
    write_bytes_atomic(path, json.dumps(data, indent=2, ensure_ascii=False).encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file whole, FILE_MODE and flushed to disk under a temp name, then rename it: never half a file.

    On any failure (a full disk above all) the temp file is removed: nothing is left behind.
    """
    make_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with open(descriptor, "wb") as file:
            os.fchmod(descriptor, FILE_MODE)
            file.write(data)
            file.flush()
            os.fsync(descriptor)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_disk_full(error: BaseException) -> bool:
    """Whether an OS or SQLite error means that the disk or the quota is full."""
    if isinstance(error, OSError):
        return error.errno in FULL_ERRNOS
    return isinstance(error, sqlite3.Error) and getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _interned(metadata: dict[str, str]) -> dict[str, str]:
    """The same metadata with shared strings: 44k items hold only a few hundred distinct keys and values."""
    return {sys.intern(key): sys.intern(value) for key, value in metadata.items()}


def _blobs(vector: np.ndarray, colour: np.ndarray) -> tuple[bytes, bytes]:
    return np.asarray(vector, np.float32).tobytes(), np.asarray(colour, np.float32).tobytes()


def _check_encoder(manifest_path: Path, encoder: object) -> None:
    """The manifest's encoder entry has what opening and searching the index read."""
    if not isinstance(encoder, dict):
        raise IndexStoreError(f"{manifest_path}: damaged manifest (no encoder); rebuild the index")
    for key in ("id", "name", "fit"):
        if not isinstance(encoder.get(key), str):
            raise IndexStoreError(f"{manifest_path}: damaged manifest (encoder {key} missing); rebuild the index")
    for key in ("dim", "size"):
        value = encoder.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise IndexStoreError(
                f"{manifest_path}: damaged manifest (encoder {key} is {value!r}, not a positive integer); "
                "rebuild the index"
            )


class IndexStore:
    """Reads and writes one index directory; safe to share between threads."""

    def __init__(self, directory: Path, manifest: dict[str, object]) -> None:
        self.directory = directory
        self.manifest = manifest
        self._lock = threading.RLock()
        path = directory / DATABASE
        created = not path.exists()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            if created:
                os.chmod(path, FILE_MODE)  # SQLite gives its -wal and -shm files the same mode
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._check_vectors()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise IndexStoreError(f"{path}: unreadable index database ({error}); rebuild the index") from None
        except IndexStoreError:
            self._db.close()
            raise

    def _check_vectors(self) -> None:
        """Every stored vector has the manifest's dimension: a mismatch is a clear error now, not a crash later."""
        wrong = self._db.execute(
            "SELECT id, length(vector), length(colour) FROM items WHERE length(vector) != ? OR length(colour) != ? "
            "LIMIT 1",
            (4 * self.dim, 4 * COLOUR_DIM),
        ).fetchone()
        if wrong:
            item, vector, colour = wrong[0], wrong[1] // 4, wrong[2] // 4
            found, wanted = (f"{vector}-d vector", f"{self.dim}-d") if vector != self.dim else (
                f"{colour}-d colour vector", f"{COLOUR_DIM}-d")  # fmt: skip
            raise IndexStoreError(
                f"{self.directory / DATABASE}: item {item!r} has a {found}, the manifest says {wanted}; "
                "the index is damaged: rebuild it"
            )

    @classmethod
    def open(cls, directory: str | Path) -> IndexStore:
        """Open an existing index, checking that this version of fashionrec can read it."""
        directory = Path(directory).expanduser()
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise IndexStoreError(f"{directory}: not a fashionrec index (no {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise IndexStoreError(f"{manifest_path}: unreadable manifest ({error})") from None
        if not isinstance(manifest, dict):
            raise IndexStoreError(f"{manifest_path}: damaged manifest (not a JSON object); rebuild the index")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IndexStoreError(
                f"{directory}: index format {manifest.get('format_version')}, "
                f"this fashionrec reads format {FORMAT_VERSION}; rebuild the index"
            )
        _check_encoder(manifest_path, manifest.get("encoder"))
        return cls(directory, manifest)

    @classmethod
    def create_or_open(
        cls, directory: str | Path, encoder: dict[str, object], catalog: dict[str, object]
    ) -> IndexStore:
        """Open the index to (re)build it, creating it if needed; refuses to mix encoders."""
        directory = Path(directory).expanduser()
        if directory.exists() and not directory.is_dir():
            raise IndexStoreError(f"{directory}: not a directory (the index is a directory)")
        if (directory / MANIFEST).is_file():
            store = cls.open(directory)
            built_with = store.manifest["encoder"]["id"]  # type: ignore[index]
            if built_with != encoder["id"]:
                raise IndexStoreError(
                    f"{directory} was built with encoder {built_with}, not {encoder['id']}; "
                    "use another --out directory, or the same encoder"
                )
            if store.dim != encoder["dim"]:
                raise IndexStoreError(
                    f"{directory / MANIFEST}: dimension {store.dim}, but encoder {built_with} gives {encoder['dim']}; "
                    "the manifest is damaged: rebuild the index in another --out directory"
                )
            store.update_manifest(catalog=catalog)
            return store
        make_dir(directory)
        manifest = {
            "format_version": FORMAT_VERSION,
            "encoder": encoder,
            "catalog": catalog,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "complete": False,
        }
        write_json_atomic(directory / MANIFEST, manifest)
        return cls(directory, manifest)

    def update_manifest(self, **fields: object) -> None:
        with self._lock:
            self.manifest = self.manifest | fields | {"updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            write_json_atomic(self.directory / MANIFEST, self.manifest)

    @property
    def dim(self) -> int:
        return int(self.manifest["encoder"]["dim"])  # type: ignore[index]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def hashes(self) -> dict[str, str]:
        """Content hash of every stored item's image, to skip what is already embedded."""
        with self._lock:
            return dict(self._db.execute("SELECT id, image_hash FROM items"))

    def put(self, items: Sequence[Item], hashes: Sequence[str], vectors: np.ndarray, colours: np.ndarray) -> None:
        """Insert or replace items with their vectors and colour vectors, all in one transaction."""
        rows = [
            (item.id, item.image, digest, json.dumps(item.metadata, ensure_ascii=False), *_blobs(vector, colour))
            for item, digest, vector, colour in zip(items, hashes, vectors, colours, strict=True)
        ]
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO items (id, image, image_hash, metadata, vector, colour) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET image=excluded.image, image_hash=excluded.image_hash, "
                "metadata=excluded.metadata, vector=excluded.vector, colour=excluded.colour",
                rows,
            )

    def update_metadata(self, items: Iterable[Item]) -> None:
        """Refresh metadata and image names of items whose image did not change."""
        rows = [(item.image, json.dumps(item.metadata, ensure_ascii=False), item.id) for item in items]
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE items SET image = ?, metadata = ? WHERE id = ?", rows)

    def remove(self, ids: Iterable[str]) -> int:
        """Delete items by id; returns how many were there."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            cursor = self._db.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in ids])
            return cursor.rowcount

    def add_item(
        self, item_id: str, image: bytes, metadata: dict[str, str], vector: np.ndarray, colour: np.ndarray
    ) -> StoredItem:
        """Store one new product: its image under uploads/ (named by hash), then its row, in one transaction.

        BEGIN IMMEDIATE takes the database's write lock first, so the duplicate check holds across processes.
        """
        digest = hashlib.blake2b(image, digest_size=16).hexdigest()
        name = f"{digest}-{secrets.token_hex(8)}"  # unique: a concurrent delete never removes this one
        stored = StoredItem(item_id, f"{UPLOADED}{UPLOADS}/{name}", metadata, digest)
        row = (item_id, stored.image, digest, json.dumps(metadata, ensure_ascii=False), *_blobs(vector, colour))
        path = self.directory / UPLOADS / name
        with self._lock, self._storage(), self._db:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if self._db.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone():
                    raise DuplicateItemError(item_id)
                write_bytes_atomic(path, image)
                self._db.execute(
                    "INSERT INTO items (id, image, image_hash, metadata, vector, colour) VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                )
                self._db.execute("COMMIT")
            except BaseException:
                path.unlink(missing_ok=True)  # no image without its row
                raise
        return stored

    def remove_item(self, item_id: str) -> bool:
        """Delete one product and, if it was added by upload, its image file; False if it was not there.

        Only a file that add_item could have written (see `upload_path`) is ever unlinked.
        """
        with self._lock, self._storage(), self._db:
            self._db.execute("BEGIN IMMEDIATE")
            found = self._db.execute("SELECT image FROM items WHERE id = ?", (item_id,)).fetchone()
            self._db.execute("DELETE FROM items WHERE id = ?", (item_id,))
            shared = found and self._db.execute("SELECT 1 FROM items WHERE image = ?", (found[0],)).fetchone()
        if found and found[0].startswith(UPLOADED) and not shared:
            path = self.upload_path(found[0])
            if path is not None:
                path.unlink(missing_ok=True)
        return found is not None

    def upload_path(self, image: str) -> Path | None:
        """The file of an uploaded image, proven to be a plain file name add_item makes, directly in this
        index's own uploads/ folder (symlinks resolved); None, and a warning logged, for anything else.

        An image value comes from the database, which a hostile catalog (or an older fashionrec) may have
        filled: `index:../index.sqlite` or `index:/etc/passwd` must never be read or deleted.
        """
        name = image.removeprefix(UPLOADED).removeprefix(f"{UPLOADS}/")
        folder = (self.directory / UPLOADS).resolve()
        if image.startswith(f"{UPLOADED}{UPLOADS}/") and UPLOAD_NAME.fullmatch(name):
            path = (folder / name).resolve()
            if folder.is_relative_to(self.directory.resolve()) and path.parent == folder:
                return path
        log.warning("refused image path %r: not a file of %s", image, folder)
        return None

    @contextmanager
    def _storage(self) -> Iterator[None]:
        """Turn a full disk into StorageFullError, after rolling back: nothing half-written stays."""
        try:
            yield
        except (OSError, sqlite3.Error) as error:
            if self._db.in_transaction:
                self._db.rollback()
            if is_disk_full(error):
                raise StorageFullError(
                    f"no space left on the disk that holds the index {self.directory.name!r}: nothing was saved"
                ) from None
            raise

    def generation(self) -> int:
        """A number that changes, durably, whenever an item or vector is added, replaced or removed."""
        with self._lock:
            return self._db.execute("SELECT value FROM generation").fetchone()[0]

    def data_version(self) -> int:
        """Changes whenever another connection (another process) commits to the database: cheap to poll."""
        with self._lock:
            return self._db.execute("PRAGMA data_version").fetchone()[0]

    def set_problems(self, problems: Iterable[Problem]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM problems")
            self._db.executemany(
                "INSERT INTO problems VALUES (?, ?, ?)", [(p.item, p.message, p.action) for p in problems]
            )

    def add_problems(self, problems: Iterable[Problem]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO problems VALUES (?, ?, ?)", [(p.item, p.message, p.action) for p in problems]
            )

    def problems(self) -> list[Problem]:
        with self._lock:
            return [Problem(*row) for row in self._db.execute("SELECT item, message, action FROM problems")]

    def load(
        self, chunk: int = 4096, with_vectors: bool = True
    ) -> Iterator[tuple[list[StoredItem], np.ndarray, np.ndarray]]:
        """All items, their vectors and colour vectors, in a stable order, a chunk at a time (bounded memory).

        With with_vectors=False the vectors are not read (an empty [n, 0] array stands for them).
        """
        vector_column = "vector" if with_vectors else "x''"
        with self._lock:
            cursor = self._db.execute(
                f"SELECT id, image, metadata, {vector_column}, colour, image_hash FROM items ORDER BY row"
            )
            for part in iter(lambda: cursor.fetchmany(chunk), []):
                if with_vectors and any(len(r[3]) != 4 * self.dim for r in part):
                    raise IndexStoreError(
                        f"{self.directory / DATABASE}: stored vectors do not have the manifest's {self.dim} "
                        "dimensions; rebuild the index"
                    )
                vectors = np.frombuffer(b"".join(r[3] for r in part), np.float32).reshape(len(part), -1)
                colours = np.frombuffer(b"".join(r[4] for r in part), np.float32).reshape(len(part), COLOUR_DIM)
                yield (
                    [
                        StoredItem(i, image, _interned(json.loads(meta)), digest)
                        for i, image, meta, _, _, digest in part
                    ],
                    vectors,
                    colours,
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()
