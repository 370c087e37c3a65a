"""Build (or update) an index from a catalog: read, decode, embed, store.

Worker processes read and decode images while the main process runs the model on full batches;
each batch is committed in one transaction, so a run killed at any point resumes where it
stopped. Images are identified by a hash of their bytes: a rerun embeds only new or changed
images and drops items that left the catalog.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fashionrec.catalog import Catalog, ImageSource, Item, Problem
from fashionrec.colour import colour_vector
from fashionrec.encoder import Encoder
from fashionrec.images import DETAIL_SAMPLE, Detail, Fit, ImageError, decode, fit_square, sides_of
from fashionrec.index import IndexStore

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


# Per-worker state, set once by _init_worker so tasks stay small.
_source: ImageSource
_size: int
_fit: Fit


def _init_worker(source: ImageSource, size: int, fit: Fit, in_pool: bool = True) -> None:
    global _source, _size, _fit
    if in_pool:  # Ctrl-C reaches the whole process group: only the main process handles it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _source, _size, _fit = source, size, fit


Prepared = tuple[str, str, "np.ndarray | None", "np.ndarray | None", "str | None"]


def _prepare(task: tuple[str, str, str | None]) -> Prepared:
    """Read, hash and decode one image: (id, hash, pixels and colour or None if unchanged, error or None)."""
    item_id, name, known_hash = task
    try:
        data = _source.read(name)
    except OSError as error:
        return item_id, "", None, None, f"cannot read image {name} ({error})"
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    if digest == known_hash:
        return item_id, digest, None, None, None
    try:
        pixels = fit_square(decode(data, name, min_side=_size), _size, _fit)
    except ImageError as error:
        return item_id, digest, None, None, f"image {error}"
    return item_id, digest, pixels, colour_vector(pixels), None


def _prepared(
    tasks: list[tuple[str, str, str | None]], source: ImageSource, encoder: Encoder, workers: int
) -> Iterator[Prepared]:
    """Prepare tasks in worker processes (or inline with workers=0), in any order.

    At most MAX_IN_FLIGHT tasks are handed out ahead of the consumer: decoded pixels would otherwise
    pile up in memory whenever decoding outpaces the model.
    """
    init_args = (source, encoder.spec.size, encoder.spec.fit)
    if workers == 0:
        _init_worker(*init_args, in_pool=False)
        yield from map(_prepare, tasks)
        return
    slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)

    def throttled() -> Iterator[tuple[str, str, str | None]]:
        for task in tasks:
            slots.acquire()
            yield task

    context = multiprocessing.get_context("spawn")  # no fork of a process holding model threads
    with context.Pool(workers, _init_worker, init_args) as pool:
        try:
            for result in pool.imap_unordered(_prepare, throttled(), chunksize=16):
                slots.release()
                yield result
        finally:
            pool.terminate()


def build_index(
    catalog: Catalog,
    out: str | Path,
    encoder: Encoder,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> BuildReport:
    """Index `catalog` into directory `out` with `encoder`, resuming or updating what is there."""
    started = time.perf_counter()
    store = IndexStore.create_or_open(out, encoder.spec.to_dict(), catalog.describe())
    store.update_manifest(complete=False)
    report = BuildReport(index=Path(out), catalog_items=len(catalog.items), problems=list(catalog.problems))
    by_id = {item.id: item for item in catalog.items}
    known = store.hashes()
    report.removed = store.remove([item_id for item_id in known if item_id not in by_id])
    store.update_metadata(by_id[item_id] for item_id in known if item_id in by_id)
    store.set_problems(catalog.problems)

    tasks = [(item.id, item.image, known.get(item.id)) for item in catalog.items]
    workers = min(os.cpu_count() or 1, 4) if workers is None else workers
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
                problem = Problem(item_id, error)
                report.problems.append(problem)
                store.add_problems([problem])
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
            f"interrupted: {store.count()} items are stored in {out}; run the same command to resume"
        ) from None
    finally:
        bar.close()
    report.total = store.count()
    report.seconds = time.perf_counter() - started
    detail = catalog_detail(catalog)
    store.update_manifest(
        detail=None if detail is None else detail.to_dict(),
        complete=True,
        counts={"items": report.total, "problems": len(report.problems), "catalog_items": len(tasks)},
    )
    store.close()
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
