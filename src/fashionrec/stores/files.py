"""The default store: vectors in a file of the index directory, searched with FAISS in memory.

On disk, `vectors.sqlite` holds one row per item: its vector and colour vector as float16 (the only
copy of them) and its metadata as JSON (what filters read). SQLite in WAL mode makes each `upsert`
or `delete` one transaction, durable when it returns. An IVF structure keeps its trained cells in
`ivf-PRECISION-N.faiss` (trained on N items, a few MB, no vectors): a later load adds the stored
vectors into those cells instead of training again, while the catalog stays within a factor
RETRAIN_FACTOR of N.

In memory, everything a search reads is one frozen `FilesSnapshot` (FAISS structure, ids, colours,
filter codes), built on first use and replaced as a whole on each write (copy-on-write), so a query
never sees half a write. A write by another process (another API worker, a rebuild) is noticed by
SQLite's data_version and the next read loads the snapshot again.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from fashionrec.colour import COLOUR_DIM
from fashionrec.stores.base import Filters, Hit, SearchSettings, StoreError
from fashionrec.stores.faiss_index import FaissIndex

DATABASE = "vectors.sqlite"
STORED = np.float16  # on disk: float16 keeps a unit vector's cosines to ~1e-3, at half of float32's size
PAGE_SIZE = 65_536  # large pages hold a 2.5 KB row without wasting most of a 4 KB page
PATCH_LIMIT = 256  # a bigger write to a loaded store drops the snapshot (reloaded on next read) instead of patching
RETRAIN_FACTOR = 2  # IVF cells trained on N items serve from N / 2 to 2 N items
READ_BATCH = 900  # ids per `IN (...)` query (SQLite allows 999 parameters on old builds)
FILE_MODE = 0o640  # as every file of the index (index.FILE_MODE)

SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    row INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    vector BLOB NOT NULL,
    colour BLOB NOT NULL,
    metadata TEXT NOT NULL
);
"""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Column:
    """One metadata column as small integer codes: a filter compares integers, not strings."""

    codes: np.ndarray  # [N] int32, an index into `values`
    values: dict[str, int]

    @classmethod
    def of(cls, cells: Sequence[str]) -> Column:
        return cls(np.zeros(0, np.int32), {}).extended(cells)

    def extended(self, cells: Sequence[str]) -> Column:
        """A copy with rows appended; this one is left as it is."""
        values = dict(self.values)
        codes = np.fromiter((values.setdefault(cell, len(values)) for cell in cells), np.int32, len(cells))
        return Column(np.concatenate([self.codes, codes]), values)

    def matches(self, wanted: Sequence[str]) -> np.ndarray:
        """[N] bool: which items hold any of the wanted values."""
        return np.isin(self.codes, [self.values[v] for v in wanted if v in self.values])


@dataclass(frozen=True)
class FilesSnapshot:
    """Everything a search reads, replaced as a whole on each change."""

    ids: list[str]
    positions: dict[str, int]  # id -> position in `index`, `colours` and every column
    index: FaissIndex
    colours: np.ndarray  # [N, COLOUR_DIM] float32
    columns: dict[str, Column]

    @classmethod
    def of(
        cls, ids: list[str], index: FaissIndex, colours: np.ndarray, metadata: Sequence[Mapping[str, str]]
    ) -> FilesSnapshot:
        names = dict.fromkeys(name for meta in metadata for name in meta)
        columns = {name: Column.of([meta.get(name, "") for meta in metadata]) for name in names}
        return cls(ids, {i: n for n, i in enumerate(ids)}, index, colours, columns)

    def with_items(
        self, ids: list[str], vectors: np.ndarray, colours: np.ndarray, metadata: Sequence[Mapping[str, str]]
    ) -> FilesSnapshot:
        """A copy with these items appended (new ids: see `without` for replaced ones)."""
        names = dict.fromkeys([*self.columns, *(name for meta in metadata for name in meta)])
        empty = Column.of([""] * len(self.ids))
        columns = {
            name: self.columns.get(name, empty).extended([meta.get(name, "") for meta in metadata]) for name in names
        }
        all_ids = self.ids + ids
        return FilesSnapshot(
            all_ids,
            {i: n for n, i in enumerate(all_ids)},
            self.index.with_added(vectors),
            np.concatenate([self.colours, colours]),
            columns,
        )

    def without(self, ids: Iterable[str]) -> FilesSnapshot:
        """A copy without these items (unknown ids are ignored)."""
        gone = np.array(sorted({self.positions[i] for i in ids if i in self.positions}), dtype=np.int64)
        if not len(gone):
            return self
        keep = np.ones(len(self.ids), dtype=bool)
        keep[gone] = False
        kept_ids = [i for i, k in zip(self.ids, keep, strict=True) if k]
        return FilesSnapshot(
            kept_ids,
            {i: n for n, i in enumerate(kept_ids)},
            self.index.without(gone),
            self.colours[keep],
            {name: Column(column.codes[keep], column.values) for name, column in self.columns.items()},
        )

    def allowed(self, filters: Filters) -> np.ndarray:
        """Positions of the items whose metadata match every filter (any of its values; "" for a missing column)."""
        mask = np.ones(len(self.ids), dtype=bool)
        for name, wanted in filters.items():
            column = self.columns.get(name) or Column.of([""] * len(self.ids))
            mask &= column.matches(list(wanted))
        return np.flatnonzero(mask).astype(np.int64)

    def search(self, queries: np.ndarray, k: int, filters: Filters | None, exclude: Collection[str]) -> list[list[Hit]]:
        allowed = self.allowed(filters) if filters is not None else None
        skipped = [self.positions[i] for i in set(exclude) if i in self.positions]
        size = len(self.ids) if allowed is None else len(allowed)
        if size == 0 or k < 1:
            return [[] for _ in queries]
        # the top k + len(skipped) hold the top k that are not excluded
        scores, positions = self.index.search(queries, min(k + len(skipped), size), allowed)
        unwanted = set(skipped)
        return [
            [Hit(self.ids[p], float(s)) for s, p in zip(row_scores, row, strict=True) if p >= 0 and p not in unwanted][
                :k
            ]
            for row_scores, row in zip(scores, positions, strict=True)
        ]

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        try:
            return np.array([self.positions[i] for i in ids], dtype=np.int64)
        except KeyError as error:
            raise KeyError(f"item {error.args[0]!r} is not in the store") from None


class FilesStore:
    """A `VectorStore` over files of an index directory (or over memory only, see `in_memory`); thread-safe."""

    uri = "files"

    def __init__(self, directory: Path | None, dim: int, settings: SearchSettings) -> None:
        self.directory = directory
        self.dim = dim
        self.settings = settings
        if settings.threads > 0:
            faiss.omp_set_num_threads(settings.threads)  # FAISS's threads are one setting per process
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._seen_version = 0
        self._snapshot: FilesSnapshot | None = None
        if directory is None:
            self._snapshot = FilesSnapshot.of([], FaissIndex(dim, 0, "exact", settings.precision), _colours(0), [])
        else:
            self._db = _connect(directory / DATABASE)
            first = self._db.execute("SELECT id, vector, colour FROM vectors ORDER BY row LIMIT 1").fetchall()
            try:
                self._decoded(first)  # a wrong dimension is a clear error now (every row is checked on load)
            except StoreError:
                self.close()
                raise

    @classmethod
    def open(cls, directory: Path, dim: int, settings: SearchSettings | None = None) -> FilesStore:
        """The store of the index in `directory` (created when new); searches load it on first use."""
        return cls(Path(directory), dim, settings or SearchSettings())

    @classmethod
    def in_memory(cls, dim: int, settings: SearchSettings | None = None) -> FilesStore:
        """A store kept in memory only (vectors under evaluation, never saved): nothing is written anywhere."""
        return cls(None, dim, settings or SearchSettings(kind="exact"))

    # Writes: SQLite first (durable), then the loaded snapshot, if any, replaced by a patched copy.

    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, colours: np.ndarray, metadata: Sequence[Mapping[str, str]]
    ) -> None:
        vectors, colours = self._checked(ids, vectors, colours, metadata)
        last = {item: n for n, item in enumerate(ids)}  # an id given twice: its last row wins, as in SQL
        rows = sorted(last.values())
        ids, vectors, colours = [ids[n] for n in rows], vectors[rows], colours[rows]
        metadata = [dict(metadata[n]) for n in rows]
        with self._lock:
            if self._db is not None:
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.executemany(
                        "INSERT INTO vectors (id, vector, colour, metadata) VALUES (?, ?, ?, ?) ON CONFLICT(id) DO "
                        "UPDATE SET vector=excluded.vector, colour=excluded.colour, metadata=excluded.metadata",
                        [
                            (
                                i,
                                v.astype(STORED).tobytes(),
                                c.astype(STORED).tobytes(),
                                json.dumps(m, ensure_ascii=False, separators=(",", ":")),
                            )
                            for i, v, c, m in zip(ids, vectors, colours, metadata, strict=True)
                        ],
                    )
            if self._snapshot is not None:
                if self._db is not None and len(ids) > PATCH_LIMIT:
                    self._snapshot = None  # a bulk write: reading it all again is cheaper than patching
                    return
                if self._db is not None:  # what a reload would read
                    vectors, colours = _as_stored(vectors), _as_stored(colours)
                self._snapshot = self._snapshot.without(ids).with_items(ids, vectors, colours, metadata)

    def delete(self, ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(ids))
        with self._lock:
            if self._db is not None:
                with self._db:
                    self._db.execute("BEGIN")
                    removed = self._db.executemany("DELETE FROM vectors WHERE id = ?", [(i,) for i in ids]).rowcount
            else:
                removed = sum(i in self._snapshot.positions for i in ids)  # type: ignore[union-attr]
            if self._snapshot is not None:
                self._snapshot = self._snapshot.without(ids)
            return removed

    # Reads

    def search(
        self, queries: np.ndarray, k: int, filters: Filters | None = None, exclude: Collection[str] = ()
    ) -> list[list[Hit]]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        return self.snapshot().search(queries, k, filters, exclude)

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        snapshot = self._loaded()
        if snapshot is None:
            return self._read(ids)[0]
        if not ids:
            return np.zeros((0, self.dim), np.float32)
        return snapshot.index.vectors(snapshot.rows(ids))

    def colours(self, ids: Sequence[str]) -> np.ndarray:
        snapshot = self._loaded()
        if snapshot is None:
            return self._read(ids)[1]
        return snapshot.colours[snapshot.rows(ids)]

    def count(self) -> int:
        snapshot = self._loaded()
        if snapshot is not None:
            return len(snapshot.ids)
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]  # type: ignore[union-attr]

    def stream(self, batch: int = 10_000) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        if self._db is None:
            snapshot = self.snapshot()
            for start in range(0, len(snapshot.ids), batch):
                ids = snapshot.ids[start : start + batch]
                yield ids, self.vectors(ids), self.colours(ids)
            return
        last = -1  # keyset paging: the lock is held per batch, never while the caller works
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, vector, colour, row FROM vectors WHERE row > ? ORDER BY row LIMIT ?", (last, batch)
                ).fetchall()
            if not rows:
                return
            last = rows[-1][3]
            yield [r[0] for r in rows], *self._decoded(rows)

    def snapshot(self) -> FilesSnapshot:
        """The current snapshot: loaded on first use, and again after another process wrote."""
        snapshot = self._loaded()
        if snapshot is not None:
            return snapshot
        with self._lock:
            if self._snapshot is None or self._changed_elsewhere():
                self._snapshot = self._load()
            return self._snapshot

    def _loaded(self) -> FilesSnapshot | None:
        """The loaded snapshot if it is current, else None (nothing is loaded here)."""
        snapshot = self._snapshot
        if snapshot is None or self._changed_elsewhere():
            return None
        return snapshot

    def _changed_elsewhere(self) -> bool:
        """Whether another connection (another process) committed since the snapshot was loaded: microseconds."""
        if self._db is None:
            return False
        with self._lock:
            return self._db.execute("PRAGMA data_version").fetchone()[0] != self._seen_version

    def _load(self) -> FilesSnapshot:
        """Every stored item into a new snapshot; an IVF fills the cells it trained before (see module doc)."""
        assert self._db is not None and self.directory is not None
        db = self._db
        self._seen_version = db.execute("PRAGMA data_version").fetchone()[0]  # before: a write now loads again
        ids: list[str] = []
        colours: list[np.ndarray] = []
        metadata: list[dict[str, str]] = []

        def chunks() -> Iterator[np.ndarray]:  # read once, or twice to train an IVF: items kept the first time
            first = not ids
            cursor = db.execute("SELECT id, vector, colour, metadata FROM vectors ORDER BY row")
            for rows in iter(lambda: cursor.fetchmany(4096), []):
                vectors, part_colours = self._decoded(rows)
                if first:
                    ids.extend(r[0] for r in rows)
                    colours.append(part_colours)
                    metadata.extend(_interned(json.loads(r[3])) for r in rows)
                yield vectors

        db.execute("BEGIN")  # one read transaction: the count and every pass see the same rows
        try:
            count = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
            kind, precision = self.settings.kind_for(count), self.settings.precision
            trained = self._trained_cells(count) if kind == "ivf" else None
            index = FaissIndex.build(self.dim, count, chunks, self.settings.kind, precision, trained)
        finally:
            db.execute("COMMIT")
        if kind == "ivf" and trained is None:
            self._save_cells(index, count)
        return FilesSnapshot.of(ids, index, np.concatenate(colours) if colours else _colours(0), metadata)

    def _cell_files(self) -> list[tuple[int, Path]]:
        assert self.directory is not None
        found = []
        for path in self.directory.glob(f"ivf-{self.settings.precision}-*.faiss"):
            trained_on = path.stem.rsplit("-", 1)[-1]
            if trained_on.isdigit():
                found.append((int(trained_on), path))
        return found

    def _trained_cells(self, count: int) -> FaissIndex | None:
        """The IVF cells trained before on a catalog of about this size, or None (train them now)."""
        for trained_on, path in self._cell_files():
            if trained_on / RETRAIN_FACTOR <= count <= trained_on * RETRAIN_FACTOR:
                try:
                    cells = FaissIndex.read(path, self.settings.precision)
                except RuntimeError as error:  # a damaged cache: train again
                    log.warning("could not read the IVF cells %s (%s): training them again", path, error)
                    continue
                if cells.dim == self.dim and len(cells) == 0:
                    return cells
        return None

    def _save_cells(self, index: FaissIndex, count: int) -> None:
        """Keep the trained cells for the next load (a cache: a full disk must not stop serving)."""
        assert self.directory is not None
        for _, stale in self._cell_files():
            stale.unlink(missing_ok=True)
        try:
            index.emptied().write(self.directory / f"ivf-{self.settings.precision}-{count}.faiss")
        except (OSError, RuntimeError) as error:
            log.warning("could not save the IVF cells in %s: %s", self.directory, error)

    def _read(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and colours of these ids straight from the file, in the order asked (KeyError if one is missing)."""
        found: dict[str, tuple] = {}
        for start in range(0, len(ids), READ_BATCH):
            part = list(ids[start : start + READ_BATCH])
            marks = ",".join("?" * len(part))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT id, vector, colour FROM vectors WHERE id IN ({marks})", part
                ).fetchall()
            found.update((r[0], r) for r in rows)
        missing = next((i for i in ids if i not in found), None)
        if missing is not None:
            raise KeyError(f"item {missing!r} is not in the store")
        return self._decoded([found[i] for i in ids])

    def _decoded(self, rows: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and colours [n, dim] and [n, COLOUR_DIM] float32 of (id, vector, colour, ...) rows."""
        for row in rows:
            for name, blob, wanted in (("vector", row[1], self.dim), ("colour vector", row[2], COLOUR_DIM)):
                if len(blob) != 2 * wanted:
                    raise StoreError(
                        f"{self.directory and self.directory / DATABASE}: item {row[0]!r} has a {len(blob) // 2}-d "
                        f"{name}, the manifest says {wanted}-d; the index is damaged: rebuild it"
                    )
        vectors = np.frombuffer(b"".join(r[1] for r in rows), STORED).astype(np.float32).reshape(len(rows), self.dim)
        colours = np.frombuffer(b"".join(r[2] for r in rows), STORED).astype(np.float32).reshape(len(rows), COLOUR_DIM)
        return vectors, colours

    def _checked(
        self, ids: Sequence[str], vectors: np.ndarray, colours: np.ndarray, metadata: Sequence[Mapping[str, str]]
    ) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.asarray(vectors, np.float32).reshape(len(ids), -1) if len(ids) else _vectors(0, self.dim)
        colours = np.asarray(colours, np.float32).reshape(len(ids), -1) if len(ids) else _colours(0)
        if vectors.shape[1] != self.dim or colours.shape[1] != COLOUR_DIM or len(metadata) != len(ids):
            raise ValueError(
                f"upsert of {len(ids)} ids needs [{len(ids)}, {self.dim}] vectors, [{len(ids)}, {COLOUR_DIM}] "
                f"colours and {len(ids)} metadata, got {vectors.shape}, {colours.shape} and {len(metadata)}"
            )
        return vectors, colours

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._snapshot = None


def _connect(path: Path) -> sqlite3.Connection:
    """The store's database, created with large pages, FILE_MODE and WAL when new."""
    created = not path.exists()
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        if created:
            os.chmod(path, FILE_MODE)  # SQLite gives its -wal and -shm files the same mode
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only before the first table (and WAL) exists
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # durable when a write returns, power loss included
        db.executescript(SCHEMA)
    except sqlite3.DatabaseError as error:
        db.close()
        raise StoreError(f"{path}: unreadable vector database ({error}); rebuild the index") from None
    return db


def _interned(metadata: dict[str, str]) -> dict[str, str]:
    """The same metadata with shared strings: 44k items hold only a few hundred distinct keys and values."""
    return {sys.intern(key): sys.intern(value) for key, value in metadata.items()}


def _as_stored(rows: np.ndarray) -> np.ndarray:
    return rows.astype(STORED).astype(np.float32)


def _blob(row: np.ndarray) -> bytes:
    return row.astype(STORED).tobytes()


def _vectors(rows: int, dim: int) -> np.ndarray:
    return np.zeros((rows, dim), np.float32)


def _colours(rows: int) -> np.ndarray:
    return np.zeros((rows, COLOUR_DIM), np.float32)
