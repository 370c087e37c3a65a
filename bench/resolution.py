"""Resolution gap: does a photo sharper than the catalog find its product? Exact-product R@1 and R@5.

Real shoppers' photos hold more detail than a 60x80 catalog: the same product shot served at 225x300
found its own catalog entry first only 78% of the time. Upscaling catalog images (bench/robustness.py)
cannot show this, since the upscaled copy holds no more detail than the catalog. Here the catalog is
made blurrier instead: a Kaggle-layout copy of the shared catalog with every image reduced by --scale
(0.5: 30x40), indexed once under --work; the queries are the real 60x80 photos, which hold --scale^-1
times the catalog's detail, as they are, squashed to 224x224, and enlarged. Each query runs with and
without matching the catalog's detail (`images.match_detail`) in the same run.

What it cannot see: real photos differ from the catalog in more than detail (light, backdrop, pose,
another shop's retouching); the reduction here is one resampling filter (Lanczos), the catalog's own
may differ; and a 2x gap is smaller than a 1000 px photo against a 60x80 catalog.

    python bench/resolution.py                        # the whole catalog at half resolution, 500 queries
    python bench/resolution.py --catalog-items 5000   # quick
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import REPO, RESULTS, catalog_subset, write_results
from PIL import Image
from robustness import bar_chart, open_index, recall_at
from tqdm import tqdm

from fashionrec.catalog import Catalog, load_catalog
from fashionrec.encoders import load_encoder
from fashionrec.images import Detail, decode

Make = Callable[[Image.Image, Image.Image], Image.Image]  # (the real photo, the catalog copy) -> query


def resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image.resize(size, Image.Resampling.LANCZOS)


VARIANTS: dict[str, Make] = {
    "catalog copy": lambda real, copy: copy,
    "sharper (real 60x80)": lambda real, copy: real,
    "sharper, enlarged 3x": lambda real, copy: resized(real, (real.width * 3, real.height * 3)),
    "sharper, squashed 224x224": lambda real, copy: resized(real, (224, 224)),
    "blurrier than catalog": lambda real, copy: resized(copy, (copy.width // 2, copy.height // 2)),
}


def reduced_catalog(catalog: Catalog, scale: float, folder: Path) -> Catalog:
    """A Kaggle-layout copy of `catalog` with every image reduced by `scale` (JPEG quality 95), made once."""
    done = folder / "styles.csv"
    if not done.is_file():
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for item in tqdm(catalog.items, desc=f"Reducing images x{scale}", unit="img"):
            image = decode(catalog.source.read(item.image), item.image)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            resized(image, size).save(folder / "images" / f"{item.id}.jpg", quality=95)
        columns = list(catalog.items[0].metadata)
        tmp = done.with_suffix(".tmp")
        with open(tmp, "w", newline="") as file:
            csv.writer(file).writerows([["id", *columns]] + [[i.id, *i.metadata.values()] for i in catalog.items])
        tmp.rename(done)  # last: a folder with styles.csv is whole
    return load_catalog(folder)


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.5, help="catalog images are reduced by this factor")
    parser.add_argument("--encoder", default="efficientnet-lite0", help="encoder name or trained model directory")
    parser.add_argument("--items", type=int, default=500, help="sampled catalog items, each queried in every variant")
    parser.add_argument("--catalog-items", type=int, default=None, help="index a subset (default: the whole catalog)")
    parser.add_argument("--work", type=Path, default=REPO / "indexes" / "resolution")
    parser.add_argument("--results", default="resolution", help="name of the results file and chart folder")
    parser.add_argument(
        "--isolate", nargs="+", default=["none", "auto"], help="garment isolation methods to run detail-matched"
    )
    args = parser.parse_args()

    original = catalog_subset(args.catalog_items)
    reduced = reduced_catalog(original, args.scale, args.work / f"catalog-{len(original.items)}-x{args.scale}")
    encoder = load_encoder(args.encoder)
    recommender, _ = open_index(reduced, args.work, f"x{args.scale}-{Path(args.encoder).name}", encoder)
    detail = recommender.detail
    print("catalog detail:", detail)
    modes: dict[str, tuple[Detail | None, str]] = {"as sent": (None, "none")}
    for method in args.isolate:  # garment isolation (`auto` is every surface's default) runs after detail matching
        modes["detail matched" + ("" if method == "none" else f", isolate {method}")] = (detail, method)

    items = random.Random(1).sample([i for i in original.items if i.id in recommender.positions], args.items)
    hits = {mode: {variant: np.zeros((len(items), 2), bool) for variant in VARIANTS} for mode in modes}
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    for n, item in enumerate(tqdm(items, desc="Querying", unit="item")):
        real = decode(original.source.read(item.image), item.image)
        copy = decode(reduced.source.read(f"images/{item.id}.jpg"), item.id)
        for variant, make in VARIANTS.items():
            data = jpeg(make(real, copy))
            for mode, (mode_detail, method) in modes.items():
                recommender.detail = mode_detail
                recommender.forget_queries()  # the cache knows the photo, not the detail: each mode must embed
                started = time.perf_counter()
                found = [match.id for match in recommender.similar_to_image(data, k=5, isolate=method)]  # type: ignore[arg-type]
                seconds[mode].append(time.perf_counter() - started)
                hits[mode][variant][n] = (found[:1] == [item.id], item.id in found)

    recall = {mode: {variant: recall_at(found) for variant, found in per.items()} for mode, per in hits.items()}
    for mode, per in recall.items():
        print(mode, {variant: figures["R@1"] for variant, figures in per.items()})
    out = RESULTS / args.results
    out.mkdir(parents=True, exist_ok=True)
    title = f"Catalog at {args.scale:g}x resolution ({len(reduced.items):,} items): query photos sharper than it"
    bar_chart(recall, "R@1", out / "r1_by_variant.png", list(VARIANTS), title)
    write_results(
        args.results,
        {
            "scale": args.scale,
            "encoder": recommender.info()["encoder"],
            "index_items": len(reduced.items),
            "query_items": len(items),
            "catalog_detail": None if detail is None else detail.to_dict(),
            "recall": recall,
            "query_ms_p50": {mode: round(float(np.median(s)) * 1000, 1) for mode, s in seconds.items()},
            "note": "hit = the original item ranked 1 (R@1) / within 5 (R@5) for the variant's JPEG bytes",
        },
    )


if __name__ == "__main__":
    main()
