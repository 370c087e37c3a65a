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
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashionrec.colour import COLOUR_DIM
from fashionrec.columns import Column, columns_of, extended_columns
from fashionrec.stores.base import Filters, Hit, SearchSettings, StoreError
from fashionrec.stores.faiss_index import FaissIndex, search_threads

DATABASE = "vectors.sqlite"
STORED = np.float16  # on disk: float16 keeps a unit vector's cosines to ~1e-3, at half of float32's size
PAGE_SIZE = 65_536  # large pages hold a 2.5 KB row without wasting most of a 4 KB page
PATCH_LIMIT = 256  # a bigger write to a loaded store drops the snapshot (reloaded on next read) instead of patching
RETRAIN_FACTOR = 2  # IVF cells trained on N items serve from N / 2 to 2 N items
WAL_PAGES = 64  # the write-ahead log is folded into the file every 4 MB (SQLite's 1000 pages: 64 MB here)
READ_BATCH = 900  # ids per `IN (...)` query (SQLite allows 999 parameters on old builds)
FILE_MODE = 0o640  # as every file of the index (index.FILE_MODE)

SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    row INTEGER PRIMARY KEY AUTOINCREMENT,  -- a new row for each write: IVF lists cached by row stay true
    id TEXT NOT NULL UNIQUE,
    vector BLOB NOT NULL,
    colour BLOB NOT NULL,
    metadata TEXT NOT NULL
);
"""

log = logging.getLogger(__name__)


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
        return cls(ids, {i: n for n, i in enumerate(ids)}, index, colours, columns_of(metadata))

    def with_items(
        self, ids: list[str], vectors: np.ndarray, colours: np.ndarray, metadata: Sequence[Mapping[str, str]]
    ) -> FilesSnapshot:
        """A copy with these items appended (new ids: see `without` for replaced ones)."""
        columns = extended_columns(self.columns, len(self.ids), metadata)
        all_ids = self.ids + ids
        return FilesSnapshot(
            all_ids,
            {i: n for n, i in enumerate(all_ids)},
            self.index.with_added(vectors),
            np.concatenate([self.colours, colours]),
            columns,
        )

    def with_metadata(self, ids: list[str], metadata: Sequence[Mapping[str, str]]) -> FilesSnapshot:
        """A copy where these items (all held) have new metadata: the FAISS structure is shared, not rebuilt."""
        rows = self.rows(ids)
        names = dict.fromkeys([*self.columns, *(name for meta in metadata for name in meta)])
        empty = Column.of([""] * len(self.ids))
        columns = {
            name: self.columns.get(name, empty).replaced(rows, [meta.get(name, "") for meta in metadata])
            for name in names
        }
        return FilesSnapshot(self.ids, self.positions, self.index, self.colours, columns)

    def holds(self, ids: list[str], vectors: np.ndarray, colours: np.ndarray) -> bool:
        """Whether every id is here with exactly these vectors and colours (a metadata-only change)."""
        if not all(i in self.positions for i in ids):
            return False
        rows = self.rows(ids)
        return np.array_equal(self.index.vectors(rows), vectors) and np.array_equal(self.colours[rows], colours)

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
            search_threads(settings.threads)
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
                        "INSERT OR REPLACE INTO vectors (id, vector, colour, metadata) VALUES (?, ?, ?, ?)",
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
                if self._snapshot.holds(ids, vectors, colours):  # metadata only: an IVF is not rebuilt
                    self._snapshot = self._snapshot.with_metadata(ids, metadata)
                else:
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
        snapshot = self._holding(ids)
        if snapshot is None:
            return self._read(ids)[0]
        if not ids:
            return np.zeros((0, self.dim), np.float32)
        return snapshot.index.vectors(snapshot.rows(ids))

    def colours(self, ids: Sequence[str]) -> np.ndarray:
        snapshot = self._holding(ids)
        if snapshot is None:
            return self._read(ids)[1]
        return snapshot.colours[snapshot.rows(ids)]

    def _holding(self, ids: Sequence[str]) -> FilesSnapshot | None:
        """The loaded snapshot when it holds every id, unchecked (each search checks for other processes'
        writes: a query's own reads stay on the state it searched); else the current one; None if not loaded."""
        snapshot = self._snapshot
        if snapshot is not None and all(i in snapshot.positions for i in ids):
            return snapshot
        return self._loaded()

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
        rows: list[int] = []
        colours: list[np.ndarray] = []
        columns: dict[str, Column] = {}

        def chunks() -> Iterator[np.ndarray]:  # read once, or twice to train an IVF: items kept the first time
            first = not ids
            cursor = db.execute("SELECT id, vector, colour, metadata, row FROM vectors ORDER BY row")
            for part in iter(lambda: cursor.fetchmany(4096), []):
                vectors, part_colours = self._decoded(part)
                if first:
                    ids.extend(r[0] for r in part)
                    rows.extend(r[4] for r in part)
                    colours.append(part_colours)
                    metadata = [json.loads(r[3]) for r in part]  # read into filter codes a chunk at a time
                    columns.update(extended_columns(columns, len(ids) - len(part), metadata))
                yield vectors

        db.execute("BEGIN")  # one read transaction: the count and every pass see the same rows
        try:
            count = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
            kind = self.settings.kind_for(count)
            trained = self._trained_cells(count) if kind == "ivf" else None
            lists_changed = True
            if trained is None:
                index = FaissIndex.build(self.dim, count, chunks, self.settings.kind, self.settings.precision)
            else:
                index, path = trained
                known = _Lists.read(path)
                stored_rows = np.array(db.execute("SELECT row FROM vectors ORDER BY row").fetchall(), np.int64)
                index.fill(chunks(), known.cells_of(stored_rows.reshape(-1)))  # each vector into its last cell
                lists_changed = not np.array_equal(known.rows, rows)
        finally:
            db.execute("COMMIT")
        if kind == "ivf":
            path = self._save_cells(index, count) if trained is None else trained[1]
            if path is not None and lists_changed:
                _Lists(np.array(rows, dtype=np.int64), index.cells()).write(path)
        colours_all = np.concatenate(colours) if colours else _colours(0)
        return FilesSnapshot(ids, {i: n for n, i in enumerate(ids)}, index, colours_all, columns)

    def _cell_files(self) -> list[tuple[int, Path]]:
        assert self.directory is not None
        found = []
        for path in self.directory.glob(f"ivf-{self.settings.precision}-*.faiss"):
            trained_on = path.stem.rsplit("-", 1)[-1]
            if trained_on.isdigit():
                found.append((int(trained_on), path))
        return found

    def _trained_cells(self, count: int) -> tuple[FaissIndex, Path] | None:
        """The IVF cells trained before on a catalog of about this size (and their file), or None (train now)."""
        for trained_on, path in self._cell_files():
            if trained_on / RETRAIN_FACTOR <= count <= trained_on * RETRAIN_FACTOR:
                try:
                    cells = FaissIndex.read(path, self.settings.precision)
                except RuntimeError as error:  # a damaged cache: train again
                    log.warning("could not read the IVF cells %s (%s): training them again", path, error)
                    continue
                if cells.dim == self.dim and len(cells) == 0 and not cells.index.by_residual:
                    return cells, path
        return None

    def _save_cells(self, index: FaissIndex, count: int) -> Path | None:
        """Keep the trained cells for the next load (a cache: a full disk must not stop serving)."""
        assert self.directory is not None
        for _, stale in self._cell_files():
            stale.unlink(missing_ok=True)
            _Lists.path(stale).unlink(missing_ok=True)
        path = self.directory / f"ivf-{self.settings.precision}-{count}.faiss"
        try:
            index.emptied().write(path)
        except (OSError, RuntimeError) as error:
            log.warning("could not save the IVF cells in %s: %s", self.directory, error)
            return None
        return path

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


@dataclass(frozen=True)
class _Lists:
    """Which IVF cell each stored row went into at the last load, kept next to the cells (`ivf-*.lists.npz`):
    the next load puts each vector back in its cell without searching the cells (seconds at 44k on 2 cores).
    Rows are never reused (AUTOINCREMENT, a new row on each write), so a cached row's cell is always its own."""

    rows: np.ndarray  # [n] int64, ascending
    cells: np.ndarray  # [n] int64

    @staticmethod
    def path(cells_file: Path) -> Path:
        return cells_file.with_suffix(".lists.npz")

    @classmethod
    def read(cls, cells_file: Path) -> _Lists:
        """The lists saved with these cells, or none (every vector is then assigned again)."""
        try:
            with np.load(cls.path(cells_file), allow_pickle=False) as saved:
                return cls(saved["rows"].astype(np.int64), saved["cells"].astype(np.int64))
        except (OSError, ValueError, KeyError):
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))

    def cells_of(self, rows: np.ndarray) -> np.ndarray:
        """The cached cell of each row, -1 where it has none."""
        if not len(self.rows):
            return np.full(len(rows), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.rows, rows), len(self.rows) - 1)
        return np.where(self.rows[at] == rows, self.cells[at], -1)

    def write(self, cells_file: Path) -> None:
        """Saved whole under a temp name, then renamed: a reader sees the old lists or the new ones."""
        path = self.path(cells_file)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        try:
            np.savez(tmp, rows=self.rows, cells=self.cells.astype(np.int32))
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        except OSError as error:  # a cache only
            tmp.unlink(missing_ok=True)
            log.warning("could not save the IVF lists %s: %s", path, error)


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
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        db.executescript(SCHEMA)
    except sqlite3.DatabaseError as error:
        db.close()
        raise StoreError(f"{path}: unreadable vector database ({error}); rebuild the index") from None
    return db


def _as_stored(rows: np.ndarray) -> np.ndarray:
    return rows.astype(STORED).astype(np.float32)


def _blob(row: np.ndarray) -> bytes:
    return row.astype(STORED).tobytes()


def _vectors(rows: int, dim: int) -> np.ndarray:
    return np.zeros((rows, dim), np.float32)


def _colours(rows: int) -> np.ndarray:
    return np.zeros((rows, COLOUR_DIM), np.float32)
