"""Index stage: the on-disk store of one catalog's items, vectors and problems.

An index is a directory that describes itself:
- `manifest.json`: format version, encoder spec, catalog source, counts (replaced atomically);
- `index.sqlite`: item records (id, image, content hash, metadata JSON), the records of products' further
  photos (`photos`: each its own vector, keyed `<id>#<hash of its image name>`), and problems;
- the vectors, colour vectors and filterable metadata, in the store the manifest names (`store`:
  "files", the default, keeps them in the directory: stores/files.py; or a Milvus database);
- `uploads/`: images of products added one by one (the REST API), named by content hash, never by id.

The directory is created 0o750 and every file fashionrec writes in it 0o640 (whatever the umask):
catalog metadata and uploaded photos are readable by the owner's group, never by every user.

Write order (a build killed at any moment keeps every committed batch and never has an item without
its vectors): `put` and `add_item` write the vectors to the store first (durable when it returns),
then the item records in one SQLite transaction (WAL mode); `remove` deletes the records first, then
the vectors. A kill in between leaves only vectors without a record, which searches skip and the
next build replaces (the item has no record, so it is embedded again). No pickle anywhere.
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashionrec.catalog import Item, Problem
from fashionrec.stores import SearchSettings, StoreError, VectorStore, open_store

FORMAT_VERSION = 3  # 2: a colour vector per item; 3: vectors in the store, float16
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
    metadata TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS generation (value INTEGER NOT NULL);
INSERT INTO generation SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM generation);
CREATE TRIGGER IF NOT EXISTS item_added AFTER INSERT ON items BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER IF NOT EXISTS item_removed AFTER DELETE ON items BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER IF NOT EXISTS item_changed AFTER UPDATE OF image_hash ON items
    BEGIN UPDATE generation SET value = value + 1; END;
CREATE TABLE IF NOT EXISTS photos (
    key TEXT PRIMARY KEY,
    product TEXT NOT NULL,
    image TEXT NOT NULL,
    image_hash TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS photos_by_product ON photos (product);
CREATE TRIGGER IF NOT EXISTS photo_added AFTER INSERT ON photos BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER IF NOT EXISTS photo_removed AFTER DELETE ON photos BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER IF NOT EXISTS photo_changed AFTER UPDATE OF image_hash ON photos
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


@dataclass(frozen=True)
class StoredPhoto:
    """A further photo of a product (the product's own record holds its main one): its vector is stored
    under `key`, and `product` says, explicitly, whose photo it is."""

    key: str
    product: str
    image: str
    image_hash: str


def photo_key(product: str, image: str) -> str:
    """The store key of a product's further photo: the product id and a short hash of the image's name, so
    adding or removing one photo re-embeds only that one. Never a product id: catalog ids cannot hold '#'."""
    return f"{product}#{hashlib.blake2b(image.encode(), digest_size=4).hexdigest()}"


def make_dir(path: Path) -> None:
    """Create a directory of the index with DIR_MODE (explicitly: the umask does not decide)."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)


def check_directory(directory: Path) -> None:
    """An index is a directory: a path that is something else (a file) is refused before anything is written."""
    if directory.exists() and not directory.is_dir():
        raise IndexStoreError(f"{directory}: not a directory (the index is a directory)")


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


def compact_json(metadata: dict[str, str]) -> str:
    """Metadata as stored: JSON without spaces (44k items: 1 MB less than the default separators)."""
    return json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))


def is_disk_full(error: BaseException) -> bool:
    """Whether an OS or SQLite error means that the disk or the quota is full."""
    if isinstance(error, OSError):
        return error.errno in FULL_ERRNOS
    return isinstance(error, sqlite3.Error) and getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _interned(metadata: dict[str, str]) -> dict[str, str]:
    """The same metadata with shared strings: 44k items hold only a few hundred distinct keys and values."""
    return {sys.intern(key): sys.intern(value) for key, value in metadata.items()}


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
    """Reads and writes one index directory (its records here, its vectors in `store`); thread-safe."""

    def __init__(self, directory: Path, manifest: dict[str, object], settings: SearchSettings | None = None) -> None:
        self.directory = directory
        self.manifest = manifest
        self.settings = settings or SearchSettings()  # how the store searches in memory
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
            uri = str(manifest.get("store", "files"))
            self.store: VectorStore = open_store(uri, directory, self.dim, self.settings)
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise IndexStoreError(f"{path}: unreadable index database ({error}); rebuild the index") from None
        except StoreError as error:
            self._db.close()
            raise IndexStoreError(f"{directory}: {error}") from None

    @classmethod
    def open(cls, directory: str | Path, settings: SearchSettings | None = None) -> IndexStore:
        """Open an existing index, checking that this version of fashionrec can read it.

        `settings` say how its store searches in memory (exact or approximate, precision, threads).
        """
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
        return cls(directory, manifest, settings)

    @classmethod
    def create_or_open(
        cls, directory: str | Path, encoder: dict[str, object], catalog: dict[str, object], store: str = "files"
    ) -> IndexStore:
        """Open the index to (re)build it, creating it if needed; refuses to mix encoders or stores.

        `store` is where a new index keeps its vectors ("files" or a "milvus://" URI, see stores/);
        an existing index keeps the store it was created with.
        """
        directory = Path(directory).expanduser()
        check_directory(directory)
        if (directory / MANIFEST).is_file():
            index = cls.open(directory)
            built_with = index.manifest["encoder"]["id"]  # type: ignore[index]
            if built_with != encoder["id"]:
                raise IndexStoreError(
                    f"{directory} was built with encoder {built_with}, not {encoder['id']}; "
                    "use another --out directory, or the same encoder"
                )
            if index.dim != encoder["dim"]:
                raise IndexStoreError(
                    f"{directory / MANIFEST}: dimension {index.dim}, but encoder {built_with} gives {encoder['dim']}; "
                    "the manifest is damaged: rebuild the index in another --out directory"
                )
            kept = str(index.manifest.get("store", "files"))
            if kept != store and not kept.startswith(f"{store}?"):  # milvus://x.db is the kept ...x.db?collection=
                index.close()
                raise IndexStoreError(
                    f"{directory} keeps its vectors in store {kept!r}, not {store!r}; "
                    f"use --store {kept} (or leave it out), or another --out directory"
                )
            index.update_manifest(catalog=catalog)
            return index
        make_dir(directory)
        manifest = {
            "format_version": FORMAT_VERSION,
            "store": store,
            "encoder": encoder,
            "catalog": catalog,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "complete": False,
        }
        write_json_atomic(directory / MANIFEST, manifest)
        index = cls(directory, manifest)
        if index.store.uri != store:  # the store completed the URI (a Milvus collection it named): keep that one
            index.update_manifest(store=index.store.uri)
        return index

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

    def photo_hashes(self) -> dict[str, str]:
        """Content hash of every further photo, by its key (see `photo_key`)."""
        with self._lock:
            return dict(self._db.execute("SELECT key, image_hash FROM photos"))

    def photos(self) -> list[StoredPhoto]:
        """Every product's further photos, each product's in the order they were first stored."""
        with self._lock:
            return [StoredPhoto(*row) for row in self._db.execute("SELECT key, product, image, image_hash FROM photos")]

    def put(
        self,
        items: Sequence[Item],
        hashes: Sequence[str],
        vectors: np.ndarray,
        colours: np.ndarray,
        products: Mapping[str, str] | None = None,
    ) -> None:
        """Insert or replace items with their vectors and colour vectors: the vectors (one store write),
        then the records (one transaction; see the write order in the module doc). An item whose id is a
        key of `products` is a further photo of that product (`photo_key`), recorded as such."""
        products = products or {}
        rows = [
            (item.id, item.image, digest, compact_json(item.metadata))
            for item, digest in zip(items, hashes, strict=True)
        ]
        with self._lock:
            self.store.upsert([item.id for item in items], vectors, colours, [item.metadata for item in items])
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO items (id, image, image_hash, metadata) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET image=excluded.image, image_hash=excluded.image_hash, "
                    "metadata=excluded.metadata",
                    [row for row in rows if row[0] not in products],
                )
                self._db.executemany(
                    "INSERT INTO photos (key, product, image, image_hash, metadata) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET product=excluded.product, image=excluded.image, "
                    "image_hash=excluded.image_hash, metadata=excluded.metadata",
                    [(key, products[key], *rest) for key, *rest in rows if key in products],
                )

    def update_metadata(self, items: Iterable[Item]) -> None:
        """Refresh metadata and image names of items (and further photos, by key) whose image did not change;
        the store gets the metadata that changed (what its filters read), so a resumed build does not rewrite
        every vector."""
        rows = [(item.image, compact_json(item.metadata), item.id) for item in items]
        with self._lock:
            stored = dict(self._db.execute("SELECT id, metadata FROM items"))
            photos = dict(self._db.execute("SELECT key, metadata FROM photos"))
            changed = [(meta, i) for _, meta, i in rows if stored.get(i, photos.get(i, meta)) != meta]
            for start in range(0, len(changed), 10_000):
                ids = [i for _, i in changed[start : start + 10_000]]
                metadata = [json.loads(meta) for meta, _ in changed[start : start + 10_000]]
                self.store.upsert(ids, self.store.vectors(ids), self.store.colours(ids), metadata)
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("UPDATE items SET image = ?, metadata = ? WHERE id = ?", rows)
                self._db.executemany(
                    "UPDATE photos SET image = ?, metadata = ? WHERE key = ?", [row for row in rows if row[2] in photos]
                )

    def remove(self, ids: Iterable[str]) -> int:
        """Delete items (with their further photos) or further photos, by id or key: records, then vectors;
        returns how many items were there."""
        ids = list(ids)
        with self._lock:
            with self._db:
                self._db.execute("BEGIN")
                keys = ids + self._photo_keys(ids)
                removed = self._db.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in ids]).rowcount
                self._db.executemany("DELETE FROM photos WHERE key = ?", [(key,) for key in keys])
            self.store.delete(keys)
            return removed

    def _photo_keys(self, products: Sequence[str]) -> list[str]:
        """The keys of these products' further photos (under the lock)."""
        keys: list[str] = []
        for start in range(0, len(products), 500):  # SQLite binds at most 32k values a statement
            part = products[start : start + 500]
            query = f"SELECT key FROM photos WHERE product IN ({', '.join('?' * len(part))})"
            keys += [key for (key,) in self._db.execute(query, part)]
        return keys

    def add_item(
        self, item_id: str, image: bytes, metadata: dict[str, str], vector: np.ndarray, colour: np.ndarray
    ) -> StoredItem:
        """Store one new product: its image under uploads/ (named by hash), its vectors, then its record.

        BEGIN IMMEDIATE takes the database's write lock first, so the duplicate check holds across processes.
        """
        digest = hashlib.blake2b(image, digest_size=16).hexdigest()
        name = f"{digest}-{secrets.token_hex(8)}"  # unique: a concurrent delete never removes this one
        stored = StoredItem(item_id, f"{UPLOADED}{UPLOADS}/{name}", metadata, digest)
        row = (item_id, stored.image, digest, compact_json(metadata))
        path = self.directory / UPLOADS / name
        with self._lock, self._storage(), self._db:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if self._db.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone():
                    raise DuplicateItemError(item_id)
                write_bytes_atomic(path, image)
                self.store.upsert([item_id], vector[None, :], colour[None, :], [metadata])
                self._db.execute("INSERT INTO items (id, image, image_hash, metadata) VALUES (?, ?, ?, ?)", row)
                self._db.execute("COMMIT")
            except DuplicateItemError:
                raise
            except BaseException:
                path.unlink(missing_ok=True)  # no image without its record
                self.store.delete([item_id])  # nor vectors: a record never comes without them, this undoes it
                raise
        return stored

    def remove_item(self, item_id: str) -> bool:
        """Delete one product (its records and its photos', then vectors) and, if it was added by upload, its image
        file; False if it was not there. Only a file that add_item could have written (see `upload_path`) is ever
        unlinked.
        """
        with self._lock, self._storage():
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                found = self._db.execute("SELECT image FROM items WHERE id = ?", (item_id,)).fetchone()
                keys = [item_id, *self._photo_keys([item_id])]
                self._db.execute("DELETE FROM items WHERE id = ?", (item_id,))
                self._db.execute("DELETE FROM photos WHERE product = ?", (item_id,))
                shared = found and self._db.execute("SELECT 1 FROM items WHERE image = ?", (found[0],)).fetchone()
            self.store.delete(keys)
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
        """A number that changes, durably, whenever an item is added, re-embedded (new image) or removed."""
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

    def records(self, chunk: int = 4096) -> Iterator[list[StoredItem]]:
        """All item records in a stable order (the order they were first added), a chunk at a time."""
        with self._lock:
            cursor = self._db.execute("SELECT id, image, metadata, image_hash FROM items ORDER BY row")
            parts = [[StoredItem(i, image, _interned(json.loads(meta)), digest) for i, image, meta, digest in part]
                     for part in iter(lambda: cursor.fetchmany(chunk), [])]  # fmt: skip
        yield from parts  # read under the lock, handed out without it

    def load(
        self, chunk: int = 4096, with_vectors: bool = True
    ) -> Iterator[tuple[list[StoredItem], np.ndarray, np.ndarray]]:
        """All items, their vectors and colour vectors, in a stable order, a chunk at a time.

        With with_vectors=False the vectors are not read (an empty [n, 0] array stands for them).
        """
        for part in self.records(chunk):
            ids = [item.id for item in part]
            vectors = self.store.vectors(ids) if with_vectors else np.zeros((len(part), 0), np.float32)
            yield part, vectors, self.store.colours(ids)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self.store.close()
