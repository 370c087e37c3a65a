"""Build (or update) an index from a catalog: plan, read and decode, embed, write.

The plan says, by a hash of each image's bytes, which items are new, changed, unchanged or removed,
before any image is decoded; a runner (`fashionrec.runners`: local processes, or Ray actors) decodes and
embeds the new and changed ones; every batch it hands back is committed in one transaction, so a run
killed at any point resumes where it stopped, and a rerun embeds only new or changed images and drops
items that left the catalog, whatever the runner.
"""

from __future__ import annotations

import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from fashionrec.catalog import Catalog, Item, Problem
from fashionrec.encoders import Encoder
from fashionrec.images import DETAIL_SAMPLE, Detail, ImageError, sides_of
from fashionrec.index import IndexStore, IndexStoreError, photo_key
from fashionrec.remote import FetchSettings, fetch_images
from fashionrec.runners import Runner, make_runner
from fashionrec.runners.stages import ToEmbed, content_hash, problem_of


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
    runner: str = "local"

    @property
    def skipped(self) -> int:
        return sum(p.action == "skipped" for p in self.problems)

    @property
    def rate(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


@dataclass
class BuildPlan:
    """What a build must do, decided by content hash before any image is decoded: plain data."""

    new: list[ToEmbed] = field(default_factory=list)
    changed: list[ToEmbed] = field(default_factory=list)
    unchanged: list[Item] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # images that cannot be read
    products: dict[str, str] = field(default_factory=dict)  # key of a further photo -> its product's id

    @property
    def to_embed(self) -> list[ToEmbed]:
        return self.new + self.changed


def photo_entries(catalog: Catalog) -> tuple[list[Item], dict[str, str]]:
    """One entry per photo to embed: each product under its own id (its main photo), and each further photo
    under its `photo_key`, with the product's metadata; and the further photos' product ids, by key."""
    entries: list[Item] = []
    products: dict[str, str] = {}
    for item in catalog.items:
        entries.append(Item(item.id, item.image, item.metadata))
        for image in item.more_images:
            key = photo_key(item.id, image)
            if key not in products:
                products[key] = item.id
                entries.append(Item(key, image, item.metadata))
    return entries, products


def plan_build(
    catalog: Catalog, known: dict[str, str], progress: bool = False, known_photos: dict[str, str] | None = None
) -> BuildPlan:
    """Compare the catalog with the hashes already stored (`IndexStore.hashes`, and `photo_hashes` for the
    products' further photos): reads and hashes every image.

    Reading is cheap next to decoding (a tenth of a millisecond for a catalog JPEG), and it lets the
    runners see only the work left and the progress bar show a true ETA. An image that cannot be read
    is its item's problem; the item's stored vector, if any, is kept.
    """
    entries, products = photo_entries(catalog)
    known_photos = known_photos or {}
    ids = {item.id for item in catalog.items}  # an older index may hold an id like a key: it goes, if not a product
    removed = [item_id for item_id in known if item_id not in ids] + [
        key for key in known_photos if key not in products
    ]
    plan = BuildPlan(removed=removed, products=products)
    for item in tqdm(entries, unit="img", desc="Planning", disable=not progress, dynamic_ncols=True):
        try:
            digest = content_hash(catalog.source.read(item.image))
        except (ImageError, OSError) as error:
            plan.problems.append(problem_of(products.get(item.id, item.id), item.image, error))
            continue
        before = (known_photos if item.id in products else known).get(item.id)
        if before is None:
            plan.new.append(ToEmbed(item, digest))
        elif before != digest:
            plan.changed.append(ToEmbed(item, digest))
        else:
            plan.unchanged.append(item)
    return plan


def build_index(
    catalog: Catalog,
    out: str | Path,
    encoder: Encoder,
    *,
    workers: int | None = None,
    progress: bool = True,
    runner: str = "local",
    ray_address: str | None = None,
    store: str = "files",
    fetch: FetchSettings = FetchSettings(),
) -> BuildReport:
    """Index `catalog` into directory `out` with `encoder`, resuming or updating what is there.

    `runner` is "local" (`workers` decoding processes) or "ray" (`workers` actors, default one per CPU;
    `ray_address` joins a cluster); `store` is where a new index keeps its vectors ("files", or a
    "milvus://" URI: see fashionrec.stores). Image URLs are fetched first into `out`/images (`fetch` says
    how; fashionrec.remote), unless the catalog comes from `fetch_images` already. The problems stored in
    the index are replaced, in one transaction, only when the run completes: until then (and after a run
    that was killed) the previous run's list stays visible. A full disk or another write error raises
    IndexStoreError; every batch committed before it is kept.
    """
    chosen = make_runner(runner, workers=workers, ray_address=ray_address)
    records = IndexStore.create_or_open(out, encoder.spec.to_dict(), catalog.describe(), store)
    try:
        return _build(fetch_images(catalog, out, fetch, progress), records, encoder, chosen, progress)
    except (OSError, sqlite3.Error) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise IndexStoreError(
            f"{out}: cannot write the index ({reason}); the batches stored so far are kept: "
            "free some space and run the same command to resume"
        ) from None
    finally:
        records.close()


def _build(catalog: Catalog, store: IndexStore, encoder: Encoder, runner: Runner, progress: bool) -> BuildReport:
    started = time.perf_counter()
    store.update_manifest(complete=False)
    plan = plan_build(catalog, store.hashes(), progress, store.photo_hashes())
    report = BuildReport(
        index=store.directory,
        catalog_items=len(catalog.items),
        problems=[*catalog.problems, *plan.problems],
        unchanged=len(plan.unchanged),
        runner=runner.name,
    )
    report.removed = store.remove(plan.removed)
    store.update_metadata(plan.unchanged)
    work = plan.to_embed
    bar = tqdm(total=len(work), unit="img", desc="Indexing", disable=not progress, dynamic_ncols=True)
    try:
        for batch in runner.run(work, catalog.source, encoder) if work else ():
            if batch.items:
                store.put(batch.items, batch.digests, batch.vectors, batch.colours, plan.products)
            report.embedded += len(batch.items)
            report.problems.extend(batch.problems)
            bar.update(batch.done)
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
        counts={"items": report.total, "problems": len(report.problems), "catalog_items": len(catalog.items)},
        build=runner.describe(),
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
