"""Helpers shared by the benchmarks: the shared catalog, subsets of it, and the results file."""

from __future__ import annotations

import json
import os
import platform
import random
import time
from pathlib import Path

from fashionrec.catalog import Catalog, load_catalog
from fashionrec.index import IndexStore

REPO = Path(__file__).resolve().parents[1]
SHARED_ZIP = Path(
    os.environ.get("FASHIONREC_DATA", REPO.parent / "shared" / "data" / "fashion-product-images-small.zip")
)
RESULTS = REPO / "bench" / "results"


def catalog_subset(size: int | None, seed: int = 0) -> Catalog:
    """The shared catalog, or a random subset of `size` of its items (always the same for a seed)."""
    catalog = load_catalog(SHARED_ZIP)
    if size is not None and size < len(catalog.items):
        catalog.items = random.Random(seed).sample(catalog.items, size)
    return catalog


def machine() -> dict[str, object]:
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def write_results(name: str, figures: dict[str, object]) -> Path:
    """Write bench/results/<name>.json with the figures, the machine and the time."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **figures}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    print(f"wrote {path}")
    return path


def int8_cache(directory: Path) -> None:
    """Point $FASHIONREC_CACHE at `directory`, sharing the float ONNX files already exported.

    int8 models are calibrated on the first catalog they are made for (encoders/int8.py): a benchmark
    makes its own, from its own subset, and leaves the user's cache alone.
    """
    from fashionrec.encoders.weights import cache_dir

    shared = cache_dir() / "onnx"
    (directory / "onnx").mkdir(parents=True, exist_ok=True)
    for fp32 in shared.glob("*.onnx"):
        if not fp32.stem.endswith("-int8"):  # the user's own int8 files are left out
            (directory / "onnx" / fp32.name).symlink_to(fp32)
    os.environ["FASHIONREC_CACHE"] = str(directory)


def subset_index(source: Path, out: Path, items: int) -> Path:
    """The first `items` of the index at `source`, with their stored vectors, as a complete index in `out`."""
    full = IndexStore.open(source)
    store = IndexStore.create_or_open(out, full.manifest["encoder"], full.manifest["catalog"])  # type: ignore[arg-type]
    taken = 0
    for part, vectors, colours in full.load():
        keep = min(len(part), items - taken)
        store.put(part[:keep], [item.image_hash for item in part[:keep]], vectors[:keep], colours[:keep])  # type: ignore[arg-type]
        taken += keep
        if taken == items:
            break
    detail = {"detail": full.manifest["detail"]} if "detail" in full.manifest else {}  # how its views are made
    store.update_manifest(complete=True, **detail)
    store.close()
    full.close()
    return out
