"""Does a shopper's photo of a catalog product find that product? Exact-product R@1 and R@5 per kind of photo.

Shoppers' photos are not 60x80 catalog shots: they are large, of other aspect ratios, JPEG-compressed,
slightly rotated, on other backdrops. This makes such variants of N sampled catalog items, queries each
variant's bytes with `Recommender.similar_to_image`, and counts a hit when the original item ranks first
(R@1) or within 5 (R@5). One index of the catalog per fit mode (built, or reused when complete, under
--indexes); leave-one-out P@5 on a --quality-items subset shows what a mode costs in retrieval quality,
and the time of `fit_square` per image what it costs in indexing speed.

    python bench/robustness.py                          # pad vs trim-stretch, full catalog
    python bench/robustness.py --catalog-items 5000     # quick: a 5,000-item index (also the P@5 subset)
    python bench/robustness.py --encoder MODEL_DIR --fits pad   # a trained encoder (setting "<name>-pad")
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from common import REPO, RESULTS, catalog_subset, write_results  # noqa: E402
from PIL import Image, ImageDraw, ImageOps  # noqa: E402

from fashionrec.build import build_index  # noqa: E402
from fashionrec.catalog import Catalog  # noqa: E402
from fashionrec.encoders import DEFAULT_ENCODER, Encoder, load_encoder  # noqa: E402
from fashionrec.images import Fit, decode, fit_square  # noqa: E402
from fashionrec.quality.evaluate import evaluate  # noqa: E402
from fashionrec.search import Recommender  # noqa: E402
from fashionrec.views import studio_white  # noqa: E402

OUT = RESULTS / "robustness"
WHITE = (255, 255, 255)
BACKDROPS = [(200, 200, 200), (226, 206, 178), (120, 140, 170), (70, 70, 75)]  # grey, beige, blue-grey, dark
Step = Callable[[Image.Image, random.Random], Image.Image]


def upscale(factor: int) -> Step:
    return lambda image, rng: image.resize((image.width * factor, image.height * factor), Image.Resampling.LANCZOS)


def squash(width: float, height: float) -> Step:
    size = lambda image: (round(image.width * width), round(image.height * height))  # noqa: E731
    return lambda image, rng: image.resize(size(image), Image.Resampling.LANCZOS)


def rotate(degrees: float) -> Step:
    return lambda image, rng: image.rotate(degrees, Image.Resampling.BICUBIC, expand=True, fillcolor=WHITE)


def backdrop_mask(image: Image.Image) -> np.ndarray:
    """The white backdrop: near-white pixels connected to the border (white inside the product stays)."""
    return studio_white(np.asarray(image))


def flat_backdrop(image: Image.Image, rng: random.Random) -> Image.Image:
    pixels = np.array(image)
    pixels[backdrop_mask(image)] = rng.choice(BACKDROPS)
    return Image.fromarray(pixels)


def gradient_backdrop(image: Image.Image, rng: random.Random) -> Image.Image:
    """A soft vertical gradient between two backdrop colours, with a fine noise texture."""
    top, bottom = (np.array(c, np.float32) for c in rng.sample(BACKDROPS, 2))
    ramp = np.linspace(0.0, 1.0, image.height, dtype=np.float32)[:, None, None]
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 6, (image.height, image.width, 1))
    backdrop = np.clip(top + (bottom - top) * ramp + noise, 0, 255).astype(np.uint8)
    pixels = np.array(image)
    mask = backdrop_mask(image)
    pixels[mask] = np.broadcast_to(backdrop, pixels.shape)[mask]
    return Image.fromarray(pixels)


@dataclass(frozen=True)
class Variant:
    """A kind of query photo: steps applied to the decoded catalog shot, then saved as JPEG."""

    steps: tuple[Step, ...]
    quality: int = 92


VARIANTS: dict[str, Variant] = {
    "catalog": Variant(()),
    "x8": Variant((upscale(8),)),
    "x16": Variant((upscale(16),)),
    "wide x1.4": Variant((squash(1.4, 1.0),)),
    "tall x1.4": Variant((squash(1.0, 1.4),)),
    "jpeg q25": Variant((), quality=25),
    "rotate +5": Variant((rotate(5),)),
    "rotate -5": Variant((rotate(-5),)),
    "flat backdrop": Variant((flat_backdrop,)),
    "gradient backdrop": Variant((gradient_backdrop,)),
    "x8 wide x1.4 q50": Variant((squash(1.4, 1.0), upscale(8)), quality=50),
    "x16 rotate +3 gradient q60": Variant((rotate(3), gradient_backdrop, upscale(16)), quality=60),
    "x8 tall x1.4 flat q40": Variant((flat_backdrop, squash(1.0, 1.4), upscale(8)), quality=40),
}


def make_query(image: Image.Image, variant: Variant, rng: random.Random) -> bytes:
    for step in variant.steps:
        image = step(image, rng)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=variant.quality)
    return buffer.getvalue()


def setting_name(encoder: str, name: str | None, fit: Fit) -> str:
    """The fit alone for the default encoder (the names of earlier results), else `<name or encoder>-<fit>`."""
    return fit if encoder == DEFAULT_ENCODER and name is None else f"{name or Path(encoder).name}-{fit}"


def open_index(catalog: Catalog, root: Path, name: str, encoder: Encoder) -> tuple[Recommender, float | None]:
    """The index of `catalog` with this encoder, built under `root` unless complete there; and its images/s."""
    directory = root / f"{len(catalog.items)}-{name}{encoder.spec.size}"
    manifest = json.loads((directory / "manifest.json").read_text()) if (directory / "manifest.json").is_file() else {}
    rate = None
    if not (manifest.get("complete") and manifest["encoder"]["id"] == encoder.id):  # else build refuses or resumes
        rate = round(build_index(catalog, directory, encoder).rate, 1)
    return Recommender.open(directory), rate


def fit_cost_us(images: list[Image.Image], fit: Fit, size: int) -> float:
    """Microseconds of `fit_square` per image: the part of indexing a fit mode changes."""
    started = time.perf_counter()
    for image in images:
        fit_square(image, size, fit)
    return round((time.perf_counter() - started) / len(images) * 1e6, 1)


def recall_at(hits: np.ndarray) -> dict[str, float]:
    """R@1 and R@5 from [items, 2] booleans: found first, found within 5."""
    r1, r5 = hits.mean(axis=0).round(4).tolist()
    return {"R@1": r1, "R@5": r5}


def sample_grid(rows: list[tuple[list[Image.Image], list[bool]]], path: Path) -> None:
    """One row per item, one tile per variant, framed green when the variant found its product first."""
    tile, frame = (72, 96), 4
    grid = Image.new("RGB", ((tile[0] + 2 * frame) * len(VARIANTS), (tile[1] + 2 * frame) * len(rows)), WHITE)
    for row, (images, hits) in enumerate(rows):
        for column, (image, hit) in enumerate(zip(images, hits, strict=True)):
            colour = (40, 160, 60) if hit else (210, 40, 40)
            framed = ImageOps.expand(ImageOps.pad(image, tile, color=WHITE), frame, colour)
            grid.paste(framed, (column * framed.width, row * framed.height))
    header = Image.new("RGB", (grid.width, 14), WHITE)
    for column, name in enumerate(VARIANTS):
        ImageDraw.Draw(header).text((column * (tile[0] + 2 * frame) + 2, 2), name[:13], fill=(0, 0, 0))
    page = Image.new("RGB", (grid.width, grid.height + header.height), WHITE)
    page.paste(header, (0, 0))
    page.paste(grid, (0, header.height))
    page.save(path)


def bar_chart(
    recall: dict[str, dict[str, dict[str, float]]],
    metric: str,
    path: Path,
    variants: list[str] = list(VARIANTS),  # noqa: B006 (read only)
    title: str | None = None,
) -> None:
    """One group of bars per kind of photo, one bar per setting (fit, encoder, or query-side mode)."""
    settings = list(recall)
    positions = np.arange(len(variants))
    width = 0.8 / len(settings)
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for n, setting in enumerate(settings):
        values = [recall[setting][variant][metric] for variant in variants]
        bars = ax.bar(positions + n * width - 0.4 + width / 2, values, width, label=setting)
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
    ax.set_xticks(positions, variants, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"exact-product {metric}")
    ax.axhline(0.95, color="grey", lw=0.6, ls="--")
    ax.axhline(0.80, color="grey", lw=0.6, ls=":")
    ax.legend(title="setting", fontsize=8)
    ax.set_title(title or f"Query photos of catalog products: {metric} per kind of photo")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fits", nargs="+", choices=get_args(Fit), default=["pad", "trim-stretch"])
    parser.add_argument("--size", type=int, default=None, help="model input size (default: the encoder's own)")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, help="encoder name or trained model directory")
    parser.add_argument("--name", help="the encoder's name in the results (default: its name or folder)")
    parser.add_argument("--items", type=int, default=500, help="sampled catalog items, each queried in every variant")
    parser.add_argument("--catalog-items", type=int, default=None, help="index a subset (default: the whole catalog)")
    parser.add_argument("--quality-items", type=int, default=5000, help="subset for leave-one-out P@5")
    parser.add_argument("--indexes", type=Path, default=REPO / "indexes" / "robustness")
    parser.add_argument("--grid-items", type=int, default=6)
    args = parser.parse_args()

    catalog = catalog_subset(args.catalog_items)
    quality_catalog = catalog_subset(args.quality_items)
    recommenders, quality, rates = {}, {}, {}
    fits = {setting_name(args.encoder, args.name, fit): fit for fit in args.fits}
    encoders = {setting: load_encoder(args.encoder, size=args.size, fit=fit) for setting, fit in fits.items()}
    size = next(iter(encoders.values())).spec.size
    for setting, encoder in encoders.items():
        recommenders[setting], rates[setting] = open_index(catalog, args.indexes, setting, encoder)
        subset, _ = open_index(quality_catalog, args.indexes, setting, encoder)
        labels = evaluate(subset, ["articleType", "baseColour"], [5], progress=False)["labels"]
        quality[setting] = {name: round(figures["P@5"], 4) for name, figures in labels.items()}
        print(setting, "P@5", quality[setting], flush=True)

    known = set.intersection(*(set(r.positions) for r in recommenders.values()))
    items = random.Random(1).sample([item for item in catalog.items if item.id in known], args.items)
    hits = {setting: {variant: np.zeros((len(items), 2), bool) for variant in VARIANTS} for setting in fits}
    grids: dict[str, list[tuple[list[Image.Image], list[bool]]]] = {setting: [] for setting in fits}
    originals = []
    for n, item in enumerate(items):
        original = decode(catalog.source.read(item.image), item.image)
        originals.append(original)
        rng = random.Random(f"{item.id}")
        queries = {name: make_query(original, variant, rng) for name, variant in VARIANTS.items()}
        for setting, recommender in recommenders.items():
            for name, data in queries.items():
                found = [match.id for match in recommender.similar_to_image(data, k=5)]
                hits[setting][name][n] = (found[:1] == [item.id], item.id in found)
            if n < args.grid_items:
                pictures = [decode(data, name) for name, data in queries.items()]
                grids[setting].append((pictures, [bool(hits[setting][v][n, 0]) for v in VARIANTS]))
        if n % 50 == 49:
            print(f"{n + 1}/{len(items)} items", flush=True)

    setup = {
        "index_items": len(catalog.items),
        "query_items": len(items),
        "quality_items": len(quality_catalog.items),
        "size": size,
        "variants": list(VARIANTS),
    }
    settings = {
        setting: {
            "fit": setting,
            "encoder": recommenders[setting].info()["encoder"],
            "recall": {variant: recall_at(found) for variant, found in per.items()},
            "leave-one-out P@5": quality[setting],
            "fit_square_us_per_catalog_image": fit_cost_us(originals, fits[setting], size),
            "build_images_per_s": rates[setting],
        }
        for setting, per in hits.items()
    }
    for setting in settings.values():
        print(json.dumps(setting), flush=True)
    previous = RESULTS / "robustness.json"
    if previous.is_file():  # the same benchmark run for other fits: keep their figures, so fits can be added one by one
        old = json.loads(previous.read_text())
        if all(old.get(key) == value for key, value in setup.items()):
            settings = {setting["fit"]: setting for setting in old["settings"]} | settings
    OUT.mkdir(parents=True, exist_ok=True)
    for setting, rows in grids.items():
        sample_grid(rows, OUT / f"samples_{setting}.png")
    recall = {name: setting["recall"] for name, setting in settings.items()}
    bar_chart(recall, "R@1", OUT / "r1_by_variant.png")
    bar_chart(recall, "R@5", OUT / "r5_by_variant.png")
    note = "hit = the original item is ranked 1 (R@1) / within 5 (R@5) for the variant's JPEG bytes"
    write_results("robustness", {**setup, "settings": list(settings.values()), "note": note})


if __name__ == "__main__":
    main()
