"""Build (or update) an index from a catalog: read, decode, embed, store.

Worker processes read and decode images while the main process runs the model on full batches.
Spawned processes re-import the caller's `__main__` script; when that script would start the build
again (no `if __name__ == "__main__":` guard, as a pasted snippet has none), worker threads decode
instead: slower for small images (the GIL), but a library call works as the user wrote it. Each batch
is committed in one transaction, so a run killed at any point resumes where it stopped. Images are
identified by a hash of their bytes: a rerun embeds only new or changed images and drops items that
left the catalog.
"""

from __future__ import annotations

import ast
import hashlib
import multiprocessing
import os
import random
import signal
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fashionrec.catalog import Catalog, ImageSource, Item, Problem
from fashionrec.colour import colour_vector
from fashionrec.encoder import Encoder
from fashionrec.images import DETAIL_SAMPLE, Detail, Fit, ImageError, decode, fit_square, sides_of
from fashionrec.index import IndexStore, IndexStoreError

COMMIT_EVERY = 256  # images per transaction: small enough to lose little when killed
MAX_IN_FLIGHT = 4 * COMMIT_EVERY


class BuildInterrupted(RuntimeError):
    """The build was stopped (Ctrl-C); everything committed so far is kept."""


@dataclass
class BuildReport:
    """What one `index` run did."""

    index: Path
    catalog_items: int
    embedded: int = 0
    unchanged: int = 0
    removed: int = 0
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    total: int = 0

    @property
    def skipped(self) -> int:
        return sum(p.action == "skipped" for p in self.problems)

    @property
    def rate(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


Task = tuple[str, str, "str | None"]  # item id, image name, hash of the image already embedded
Prepared = tuple[str, str, "np.ndarray | None", "np.ndarray | None", "str | None"]


@dataclass(frozen=True)
class _Preparer:
    """Reads, hashes and decodes images of one source for one encoder's input."""

    source: ImageSource
    size: int
    fit: Fit

    def __call__(self, task: Task) -> Prepared:
        """(id, hash, pixels and colour or None if unchanged, error or None) of one image."""
        item_id, name, known_hash = task
        try:
            data = self.source.read(name)
        except ImageError as error:
            return item_id, "", None, None, f"image {error}"
        except OSError as error:
            return item_id, "", None, None, f"cannot read image {name} ({error})"
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        if digest == known_hash:
            return item_id, digest, None, None, None
        try:
            pixels = fit_square(decode(data, name, min_side=self.size), self.size, self.fit)
        except ImageError as error:
            return item_id, digest, None, None, f"image {error}"
        return item_id, digest, pixels, colour_vector(pixels), None


_worker_prepare: _Preparer  # in a worker process: set once by _init_process, so tasks stay small


def _init_process(prepare: _Preparer) -> None:
    global _worker_prepare
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the main process stops
    _worker_prepare = prepare


def _prepare_in_process(task: Task) -> Prepared:
    return _worker_prepare(task)


def spawn_is_safe() -> bool:
    """Whether spawned workers can start: they re-import the `__main__` script, which must not build again.

    True when there is no script (a REPL, a notebook, `python -c`) or when the build was called from
    inside the script's `if __name__ == "__main__":` block (as the CLI is); False otherwise.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None:
        return True
    frame = sys._getframe()
    while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
        frame = frame.f_back
    if frame is None:  # called from another thread while the script may still be running: assume not safe
        return False
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return False
    guard = ast.parse('__name__ == "__main__"', mode="eval").body
    return any(
        isinstance(node, ast.If)
        and ast.dump(node.test) == ast.dump(guard)
        and node.lineno <= frame.f_lineno <= (node.end_lineno or node.lineno)
        for node in tree.body
    )


def _prepared(tasks: list[Task], source: ImageSource, encoder: Encoder, workers: int) -> Iterator[Prepared]:
    """Prepare tasks in worker processes, worker threads when processes cannot be spawned, or inline
    with workers=0; in order.

    At most MAX_IN_FLIGHT tasks are handed out ahead of the consumer: decoded pixels would otherwise
    pile up in memory whenever decoding outpaces the model. On Ctrl-C or an error the queued tasks
    are cancelled, so the build stops at once.
    """
    prepare = _Preparer(source, encoder.spec.size, encoder.spec.fit)
    if workers == 0:
        yield from map(prepare, tasks)
        return
    pool: Executor
    if spawn_is_safe():  # spawn, not fork: this process holds model threads
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, context, initializer=_init_process, initargs=(prepare,))
        work = _prepare_in_process
    else:
        pool, work = ThreadPoolExecutor(workers, thread_name_prefix="fashionrec-decode"), prepare
    in_flight: deque[Future[Prepared]] = deque()
    try:
        for task in tasks:
            if len(in_flight) >= MAX_IN_FLIGHT:
                yield in_flight.popleft().result()
            in_flight.append(pool.submit(work, task))
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def build_index(
    catalog: Catalog,
    out: str | Path,
    encoder: Encoder,
    *,
    workers: int | None = None,
    progress: bool = True,
    store: str = "files",
) -> BuildReport:
    """Index `catalog` into directory `out` with `encoder`, resuming or updating what is there.

    The problems stored in the index are replaced, in one transaction, only when the run completes:
    until then (and after a run that was killed) the previous run's list stays visible. A full disk
    or another write error raises IndexStoreError; every batch committed before it is kept.
    `store` is where a new index keeps its vectors ("files", or a "milvus://" URI: see fashionrec.stores).
    """
    store = IndexStore.create_or_open(out, encoder.spec.to_dict(), catalog.describe(), store)
    try:
        return _build(catalog, store, encoder, min(os.cpu_count() or 1, 4) if workers is None else workers, progress)
    except (OSError, sqlite3.Error) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise IndexStoreError(
            f"{out}: cannot write the index ({reason}); the batches stored so far are kept: "
            "free some space and run the same command to resume"
        ) from None
    finally:
        store.close()


def _build(catalog: Catalog, store: IndexStore, encoder: Encoder, workers: int, progress: bool) -> BuildReport:
    started = time.perf_counter()
    store.update_manifest(complete=False)
    report = BuildReport(index=store.directory, catalog_items=len(catalog.items), problems=list(catalog.problems))
    by_id = {item.id: item for item in catalog.items}
    known = store.hashes()
    report.removed = store.remove([item_id for item_id in known if item_id not in by_id])
    store.update_metadata(by_id[item_id] for item_id in known if item_id in by_id)

    tasks = [(item.id, item.image, known.get(item.id)) for item in catalog.items]
    pending: list[tuple[Item, str, np.ndarray, np.ndarray]] = []

    def commit() -> None:
        if pending:
            items, hashes, pixels, colours = zip(*pending, strict=True)
            store.put(items, hashes, encoder.embed_pixels(np.stack(pixels)), np.stack(colours))
            report.embedded += len(pending)
            pending.clear()

    bar = tqdm(total=len(tasks), unit="img", desc="Indexing", disable=not progress, dynamic_ncols=True)
    try:
        for item_id, digest, pixels, colour, error in _prepared(tasks, catalog.source, encoder, workers):
            if error is not None:
                report.problems.append(Problem(item_id, error))
            elif pixels is None:
                report.unchanged += 1
            else:
                pending.append((by_id[item_id], digest, pixels, colour))
                if len(pending) >= COMMIT_EVERY:
                    commit()
            bar.update()
        commit()
    except KeyboardInterrupt:
        raise BuildInterrupted(
            f"interrupted: {store.count()} items are stored in {store.directory}; run the same command to resume"
        ) from None
    finally:
        bar.close()
    store.set_problems(report.problems)
    report.total = store.count()
    report.seconds = time.perf_counter() - started
    detail = catalog_detail(catalog)
    store.update_manifest(
        detail=None if detail is None else detail.to_dict(),
        complete=True,
        counts={"items": report.total, "problems": len(report.problems), "catalog_items": len(tasks)},
    )
    return report


def catalog_detail(catalog: Catalog, sample: int = DETAIL_SAMPLE, seed: int = 0) -> Detail | None:
    """The catalog's level of detail, measured on a fixed random sample of its images (about a second).

    Queries are brought down to it (`images.match_detail`); unreadable images are left out, since the
    build has reported them already.
    """
    items = random.Random(seed).sample(catalog.items, min(sample, len(catalog.items)))
    sides = []
    for item in items:
        try:
            sides.append(sides_of(catalog.source.read(item.image), item.image))
        except (OSError, ImageError):
            continue
    return Detail.measure(sides)
