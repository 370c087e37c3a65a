"""The in-memory FAISS structure over a files store's vectors: exact, or approximate for big catalogs.

- `exact`: FAISS flat inner product; every query reads every vector, which is memory-bound: under
  2 ms only up to about 10k items on 2 cores (bench/scale.py).
- `ivf`: FAISS inverted file (k-means cells); a query scans only the `nprobe` nearest cells. Picked
  over HNSW by measurement (bench/scale.py): at 1M it meets p50 < 5 ms at recall@10 0.9995 and
  builds several times faster on 2 cores, and it serves id-selector filters and removals directly.
- `auto`: exact up to ANN_THRESHOLD items, ivf above.

Vectors are held once in memory, inside FAISS, as float32 or float16 (half the memory, see
bench/vector_size.py). On disk an IVF keeps only its trained cells (`trained`, a few MB): the lists
are filled again from the stored vectors at load, so the vectors are never stored twice.
Filtered queries probe every IVF cell when the filter leaves few items (exact over them: only
selected vectors are compared, a few ms at 44k), and widen the probe otherwise, so filters keep
their recall.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from fashionrec.stores.base import ANN_THRESHOLD, PRECISIONS, SearchSettings

__all__ = ["ANN_THRESHOLD", "FaissIndex", "resolve_kind"]

Kind = Literal["auto", "exact", "ivf"]
Precision = Literal["float32", "float16"]
NPROBE = 48  # recall@10 >= 0.95 on the scale benchmark
SMALL_SELECTION = 20_000  # a filter leaving fewer items probes every IVF cell: exact over those items
TRAIN_PER_CELL = 48  # k-means sample per cell (FAISS asks for >= 39): bounds the training time
# From this many queries, an exact float32 search is a numpy matrix product and a partial sort: FAISS's flat
# search keeps a heap per query over its BLAS scores, and ran 5x slower here (1,024 x 44k: 13 s against 2.8 s;
# docs/performance.md). One query, or a handful, stays with FAISS, which needs no score matrix.
PRODUCT_QUERIES = 64
PRODUCT_BLOCK = 1024  # queries scored at a time: a 1,024 x 44k score matrix is 180 MB


class FaissIndex:
    """Top-k inner-product search (the cosine for unit vectors), optionally restricted to allowed positions."""

    def __init__(self, dim: int, size: int, kind: Kind = "auto", precision: Precision = "float32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        self.dim = dim
        self.kind = resolve_kind(kind, size)
        self.precision = precision
        self.index = self._empty(dim, size)

    def _storage(self, dim: int) -> faiss.Index:
        if self.precision == "float16":
            return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexFlatIP(dim)

    def _empty(self, dim: int, size: int) -> faiss.Index:
        if self.kind == "exact":
            return self._storage(dim)
        cells = max(1, min(int(4 * math.sqrt(size)), size // 39))  # FAISS wants >= 39 training points a cell
        quantizer = faiss.IndexFlatIP(dim)
        if self.precision == "float16":
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, dim, cells, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(NPROBE, cells)
        # Codes of the vectors themselves, not of their offsets from the cell: float16 vectors are then held
        # exactly as stored (reconstruct gives them back bit for bit, scores are their exact inner products).
        index.by_residual = False
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct() by position, and removal
        self._quantizer = quantizer  # the IVF index does not own it
        return index

    @classmethod
    def build(
        cls,
        dim: int,
        size: int,
        chunks: Callable[[], Iterable[np.ndarray]],
        kind: Kind = "auto",
        precision: Precision = "float32",
    ) -> FaissIndex:
        """An index over `size` vectors read in chunks by `chunks()`, never all in memory at once.

        IVF reads them twice: a strided sample trains the cells, then every vector is added.
        """
        index = cls(dim, size, kind, precision)
        if index.kind == "ivf":
            stride = max(1, size // (TRAIN_PER_CELL * index.index.nlist))
            sample = [vectors[(-start) % stride :: stride] for start, vectors in _offsets(chunks())]
            index.train(np.concatenate(sample) if sample else np.zeros((0, dim), np.float32))
        for vectors in chunks():
            index.add(vectors)
        return index

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, vectors: np.ndarray, cells: np.ndarray | None = None) -> None:
        """Append vectors; their positions follow the ones already there (IVF: cells trained, see `build`).

        An IVF puts each vector in its nearest cell, or in `cells` when given (see `cells`): no search then.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        positions = np.arange(len(self), len(self) + len(vectors), dtype=np.int64)
        if self.kind != "ivf":
            self.index.add(vectors)
        elif cells is None:
            self.index.add_with_ids(vectors, positions)
        elif len(vectors):
            cells = np.ascontiguousarray(cells, dtype=np.int64)
            self.index.add_core(len(vectors), faiss.swig_ptr(vectors), faiss.swig_ptr(positions), faiss.swig_ptr(cells))

    def fill(self, chunks: Iterable[np.ndarray], cells: np.ndarray) -> None:
        """Put vectors (read in chunks) into this empty trained IVF, the n-th in cell `cells[n]` (-1: not known,
        found now). Each list is sized once, exactly: lists grown entry by entry (`add`) double their memory
        as they go and keep up to twice what their vectors need (114 MB more at 44k x 1280 float16)."""
        lists, unknown, start = self.index.invlists, [], 0
        counts = np.bincount(cells[cells >= 0], minlength=self.index.nlist)
        for cell in np.flatnonzero(counts):
            lists.resize(int(cell), int(counts[cell]))
        filled = np.zeros(self.index.nlist, dtype=np.int64)
        for vectors in chunks:
            positions = np.arange(start, start + len(vectors), dtype=np.int64)
            part, start = cells[start : start + len(vectors)], start + len(vectors)
            unknown.append((positions[part < 0], vectors[part < 0]))
            codes = np.ascontiguousarray(vectors, np.float16 if self.precision == "float16" else np.float32)
            codes = codes.view(np.uint8)  # the codes of vectors held as they are (no residuals, see _empty)
            order = np.argsort(part, kind="stable")
            found, first, sizes = np.unique(part[order], return_index=True, return_counts=True)
            for cell, at, size in zip(found, first, sizes, strict=True):
                if cell >= 0:
                    rows = order[at : at + size]
                    ids, block = np.ascontiguousarray(positions[rows]), np.ascontiguousarray(codes[rows])
                    lists.update_entries(
                        int(cell), int(filled[cell]), int(size), faiss.swig_ptr(ids), faiss.swig_ptr(block)
                    )
                    filled[cell] += size
        self.index.ntotal = int(counts.sum())
        self.index.set_direct_map_type(faiss.DirectMap.NoMap)
        self.index.set_direct_map_type(faiss.DirectMap.Hashtable)  # built again from the filled lists
        for positions, vectors in unknown:
            if len(vectors):
                cells_now = np.ascontiguousarray(self.assign(vectors), dtype=np.int64)
                vectors = np.ascontiguousarray(vectors, dtype=np.float32)
                self.index.add_core(
                    len(vectors), faiss.swig_ptr(vectors), faiss.swig_ptr(positions), faiss.swig_ptr(cells_now)
                )

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """[n] int64: the IVF cell each vector belongs in."""
        return self.index.quantizer.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)[1][:, 0]

    def cells(self) -> np.ndarray:
        """[len] int64: the IVF cell of the vector at each position (what `add` may be given back later)."""
        found = np.zeros(len(self), dtype=np.int64)
        lists = self.index.invlists
        for cell in range(self.index.nlist):
            size = lists.list_size(cell)
            if size:
                found[faiss.rev_swig_ptr(lists.get_ids(cell), size)] = cell
        return found

    @classmethod
    def read(cls, path: Path, precision: Precision) -> FaissIndex:
        """An IVF index written by `write` (FAISS's own file format, not pickle)."""
        loaded = object.__new__(cls)
        loaded.index = faiss.read_index(str(path))
        loaded.dim, loaded.kind, loaded.precision = loaded.index.d, "ivf", precision
        return loaded

    def emptied(self) -> FaissIndex:
        """A copy without vectors that keeps the trained IVF cells: what is worth saving (see `build`)."""
        clone = self._copy()
        clone.index.reset()
        return clone

    def write(self, path: Path) -> None:
        """Save the index to a temp file renamed into place: readers never see half."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            faiss.write_index(self.index, str(tmp))
            os.chmod(tmp, 0o640)  # like every file of the index (index.FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def train(self, sample: np.ndarray) -> None:
        """Learn the IVF cells (k-means) from a sample of the vectors."""
        self.index.cp.niter = 10
        self.index.train(np.ascontiguousarray(sample, dtype=np.float32))

    def _copy(self) -> FaissIndex:
        clone = object.__new__(FaissIndex)
        clone.__dict__.update(self.__dict__)
        clone.index = faiss.clone_index(self.index)
        return clone

    def with_added(self, vectors: np.ndarray) -> FaissIndex:
        """A copy with vectors appended (IVF keeps its trained cells); this one is left as it is."""
        clone = self._copy()
        clone.add(vectors)
        return clone

    def without(self, positions: np.ndarray) -> FaissIndex:
        """A copy without the vectors at `positions`; the positions after them move down."""
        clone = self._copy()
        positions = np.asarray(positions, dtype=np.int64)
        if self.kind == "exact":
            clone.index.remove_ids(positions)  # a flat index compacts, keeping the order
            return clone
        keep = np.delete(np.arange(len(self)), positions)
        clone.index.reset()  # keeps the trained cells: re-adding assigns, without retraining
        clone.add(self.vectors(keep))
        return clone

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """The stored vectors at these positions (decoded to float32)."""
        return self.index.reconstruct_batch(np.asarray(positions, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and positions [n, k] of the best matches; position -1 where fewer than k exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if allowed is None:
            if self.kind == "exact" and self.precision == "float32" and len(queries) >= PRODUCT_QUERIES and len(self):
                return self._product_search(queries, k)
            return self.index.search(queries, k)
        selector = faiss.IDSelectorBatch(allowed)
        if self.kind == "exact":
            return self.index.search(queries, k, params=faiss.SearchParameters(sel=selector))
        share = len(allowed) / max(len(self), 1)
        nprobe = math.ceil(self.index.nprobe / share) if len(allowed) > SMALL_SELECTION else self.index.nlist
        params = faiss.SearchParametersIVF(sel=selector, nprobe=min(self.index.nlist, nprobe))
        return self.index.search(queries, k, params=params)

    def _product_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search` of many queries on an exact float32 index: FAISS's answer, ties in position order."""
        count = len(self)
        stored = faiss.rev_swig_ptr(self.index.get_xb(), count * self.dim).reshape(count, self.dim)  # no copy
        kept = min(k, count)
        scores = np.full((len(queries), k), -np.finfo(np.float32).max, np.float32)
        positions = np.full((len(queries), k), -1, np.int64)
        for start in range(0, len(queries), PRODUCT_BLOCK):
            block = queries[start : start + PRODUCT_BLOCK] @ stored.T
            best = np.argpartition(block, count - kept, axis=1)[:, count - kept :]
            best_scores = np.take_along_axis(block, best, axis=1)
            order = np.lexsort((best, -best_scores), axis=1)
            rows = slice(start, start + len(block))
            positions[rows, :kept] = np.take_along_axis(best, order, axis=1)
            scores[rows, :kept] = np.take_along_axis(best_scores, order, axis=1)
        return scores, positions


def search_threads(count: int) -> None:
    """Cores one search uses (process-wide): a server's requests already run side by side, one per core,
    and FAISS's own OpenMP threads would only oversubscribe them (a single search on the full catalog under
    load: 45 ms with 2 threads, 18 ms with 1)."""
    faiss.omp_set_num_threads(count)


def resolve_kind(kind: Kind, size: int) -> str:
    """The structure `kind` means for a catalog of `size` items: "exact" or "ivf"."""
    return SearchSettings(kind=kind).kind_for(size)


def _offsets(chunks: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    """Each chunk with the position of its first vector."""
    start = 0
    for vectors in chunks:
        yield start, vectors
        start += len(vectors)
