"""Shoppers' photos (issue #13): catalog products cut out and put into the world, per kind of scene.

Shoppers photograph a garment worn, on a bed, on the floor, among other things; the catalog shot it
should find is a 60x80 product on white. This makes N such scenes per kind from sampled catalog
products: the product is cut out of its white backdrop (pixels far from white, connected; holes
filled), scaled up 2-4x, and composited onto a scene at a random scale and place; then the whole photo
gets a lighting change, a mild rotation and JPEG compression. Kinds (each a named variant):

- white: the cut-out on white (a control: only scale, place, light, rotation and JPEG change)
- flat / gradient: one colour / a two-colour ramp
- wood / fabric / tiles: procedural textures (floor boards, a bed sheet with folds, tiles with grout)
- clutter: other catalog products scattered around it on a texture
- occluded: another product covering a part of it
- person: a skin-coloured head, neck, arms and legs around it, as if worn

Each scene's JPEG bytes go through `Recommender.embed_image` then `similar` (k=6) for colour weights 0
and 0.35. Measured: exact-product R@1/R@5, and P@5 of articleType, baseColour and both over the 5 best
*other* products (as if the product were not in the catalog, as for most real photos), and the query
latency (embedding + search) p50/p90. `--isolate` compares garment isolation methods (garment.py) on
the same scenes; `--name` keeps a run's figures beside earlier ones in bench/results/world.json.

What it cannot see: real camera noise, blur and depth of field, real people (bodies, poses, hair,
faces, hands holding the garment), real lighting (shadows, colour casts, specular highlights), folds
and drape of a garment worn or lying on a bed, perspective, and the real product's look at a
resolution above the catalog's 60x80 (the scenes are upscaled catalog pixels). Figures on these
scenes are an upper bound for real photos of the same kinds, useful to compare methods.

    python bench/world.py --index /work/indexes/full --name today            # today's code
    python bench/world.py --index /work/indexes/full --isolate none border u2netp
    python bench/world.py --index HALF_RES_INDEX --name half --queries heldout_ids.txt
    python bench/world.py --index /work/indexes/views-inst-b6 --items 30 --isolate none u2netp auto \
        --plain 60 --results world-isolation   # also the products' own catalog shots, another results file
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import random
import time
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from common import RESULTS, SHARED_ZIP, write_results  # noqa: E402
from PIL import Image, ImageDraw, ImageOps  # noqa: E402
from robustness import backdrop_mask  # noqa: E402
from scipy import ndimage  # noqa: E402

from fashionrec.catalog import Catalog, Item, load_catalog  # noqa: E402
from fashionrec.images import decode  # noqa: E402
from fashionrec.search import Query, Recommender  # noqa: E402

WEIGHTS = (0.0, 0.35)
METRICS = ("R@1", "R@5", "type P@5", "colour P@5", "both P@5")
LABELS = ("articleType", "baseColour")
Rng = np.random.Generator
Layer = tuple[np.ndarray, np.ndarray]  # an RGB float array and its alpha in [0, 1]


def cut_out(image: Image.Image, scale: float) -> Layer:
    """The product without its white backdrop, cropped to its box and scaled up (these pixels are all we have)."""
    mask = ndimage.binary_closing(~backdrop_mask(image), np.ones((3, 3)), border_value=0)
    mask = ndimage.binary_erosion(ndimage.binary_fill_holes(mask))  # no light JPEG fringe around the product
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:  # a white product on white: keep the whole shot
        mask[:] = True
        rows, columns = np.arange(image.height), np.arange(image.width)
    box = (columns[0], rows[0], columns[-1] + 1, rows[-1] + 1)
    size = (max(1, round((box[2] - box[0]) * scale)), max(1, round((box[3] - box[1]) * scale)))
    rgb = image.crop(box).resize(size, Image.Resampling.LANCZOS)
    alpha = Image.fromarray(mask[box[1] : box[3], box[0] : box[2]].astype(np.uint8) * 255).resize(
        size, Image.Resampling.BILINEAR
    )
    return np.asarray(rgb, np.float32), np.asarray(alpha, np.float32) / 255.0


def paste(canvas: np.ndarray, layer: Layer, x: int, y: int) -> None:
    """Alpha-blend a layer onto the canvas with its top-left corner at (x, y), clipped to the canvas."""
    rgb, alpha = layer
    height, width = alpha.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, canvas.shape[1]), min(y + height, canvas.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + rgb[y0 - y : y1 - y, x0 - x : x1 - x] * a


def colour(
    rng: Rng, saturation: tuple[float, float] = (0.05, 0.7), value: tuple[float, float] = (0.2, 0.9)
) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value)), np.float32) * 255


def smooth_noise(rng: Rng, height: int, width: int, cell: int) -> np.ndarray:
    """Values in about [0, 1] that vary over `cell` pixels: random cells, bicubic-interpolated."""
    small = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(small, "F").resize((width, height), Image.Resampling.BICUBIC))


def grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:height, 0:width].astype(np.float32)


def flat(rng: Rng, height: int, width: int) -> np.ndarray:
    return np.broadcast_to(colour(rng), (height, width, 3)).copy()


def gradient(rng: Rng, height: int, width: int) -> np.ndarray:
    y, x = grid(height, width)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = x * np.cos(angle) + y * np.sin(angle)
    ramp = ((ramp - ramp.min()) / (np.ptp(ramp) or 1.0))[..., None]
    return colour(rng) * (1 - ramp) + colour(rng) * ramp


def wood(rng: Rng, height: int, width: int) -> np.ndarray:
    """Floor boards: warped grain stripes between a light and a dark brown, with dark seams between planks."""
    y, x = grid(height, width)
    across = x if rng.random() < 0.5 else y
    hue = rng.uniform(0.05, 0.1)
    light = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.35, 0.6), rng.uniform(0.6, 0.85)), np.float32) * 255
    dark = light * rng.uniform(0.45, 0.7)
    grain = 0.5 + 0.5 * np.sin(across / rng.uniform(4, 12) + 6 * smooth_noise(rng, height, width, 48))
    plank = rng.uniform(60, 140)
    seam = (across % plank) < 2
    wood_ = dark + (light - dark) * grain[..., None] ** 2
    wood_[seam] *= 0.5
    return wood_ * (0.9 + 0.2 * smooth_noise(rng, height, width, 200)[..., None])


def fabric(rng: Rng, height: int, width: int) -> np.ndarray:
    """A bed sheet: one colour, a fine weave, soft folds and grain noise."""
    y, x = grid(height, width)
    weave = 0.5 + 0.25 * (np.sin(x * 2.4) + np.sin(y * 2.4))
    folds = 0.75 + 0.4 * smooth_noise(rng, height, width, 90)
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    return colour(rng, value=(0.4, 0.95)) * (folds * (0.92 + 0.08 * weave))[..., None] + noise


def tiles(rng: Rng, height: int, width: int) -> np.ndarray:
    """Floor tiles: squares of one colour (each a little lighter or darker) with grey grout lines."""
    y, x = grid(height, width)
    side = int(rng.integers(40, 110))
    shade = rng.uniform(0.85, 1.1, (height // side + 1, width // side + 1)).astype(np.float32)
    tiles_ = colour(rng, value=(0.5, 0.95)) * shade[(y // side).astype(int), (x // side).astype(int)][..., None]
    grout = ((x % side) < 3) | ((y % side) < 3)
    tiles_[grout] = rng.uniform(90, 170)
    return tiles_


TEXTURES: dict[str, Callable[[Rng, int, int], np.ndarray]] = {
    "flat": flat,
    "gradient": gradient,
    "wood": wood,
    "fabric": fabric,
    "tiles": tiles,
}
SKINS = [(241, 194, 167), (224, 172, 125), (198, 140, 96), (141, 85, 56), (255, 219, 190)]


def person(canvas: np.ndarray, box: tuple[int, int, int, int], rng: Rng) -> None:
    """Draw a skin-coloured head with hair, neck, arms, hands and legs around the garment's box."""
    x, y, width, height = box
    skin = tuple(int(c * rng.uniform(0.9, 1.05)) for c in SKINS[int(rng.integers(len(SKINS)))])
    hair = tuple(int(v) for v in colour(rng, (0.2, 0.6), (0.05, 0.35)))
    layer = Image.new("RGBA", (canvas.shape[1], canvas.shape[0]), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    centre, radius, arm = x + width / 2, 0.2 * width, max(4, round(0.14 * width))
    head = (centre - radius, y - 2.1 * radius, centre + radius, y - 0.1 * radius)
    draw.rectangle((centre - 0.4 * radius, y - 0.5 * radius, centre + 0.4 * radius, y + 0.1 * height), fill=skin)
    draw.ellipse(head, fill=skin)
    draw.chord((head[0] - 2, head[1] - 4, head[2] + 2, head[3] - radius * 0.6), 180, 360, fill=hair)
    for side in (-1, 1):
        shoulder = (centre + side * 0.42 * width, y + 0.08 * height)
        hand = (centre + side * (0.58 * width), y + 0.95 * height)
        draw.line([shoulder, hand], fill=skin, width=arm)
        draw.ellipse((hand[0] - arm * 0.7, hand[1] - arm * 0.5, hand[0] + arm * 0.7, hand[1] + arm), fill=skin)
        leg = centre + side * 0.18 * width
        draw.rectangle((leg - arm * 0.8, y + 0.9 * height, leg + arm * 0.8, canvas.shape[0]), fill=skin)
    rgba = np.asarray(layer, np.float32)
    paste(canvas, (rgba[..., :3], rgba[..., 3] / 255.0), 0, 0)


def finish(canvas: np.ndarray, pad: int, rng: Rng) -> bytes:
    """Lighting (gain, tint, shading ramp), a mild rotation, the padding cut away, then JPEG."""
    height, width = canvas.shape[:2]
    y, x = grid(height, width)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (x * np.cos(angle) + y * np.sin(angle)) / max(height, width)
    light = rng.uniform(0.75, 1.15) * (1 + rng.uniform(-0.15, 0.15) * ramp)[..., None]
    lit = np.clip(canvas * light * rng.uniform(0.93, 1.07, 3).astype(np.float32), 0, 255).astype(np.uint8)
    image = Image.fromarray(lit).rotate(rng.uniform(-8, 8), Image.Resampling.BICUBIC)
    image = image.crop((pad, pad, width - pad, height - pad))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(60, 93)))
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


KINDS = ("white", *TEXTURES, "clutter", "occluded", "person")


def scene(kind: str, product: Image.Image, others: list[Image.Image], rng: Rng) -> bytes:
    """The product in a scene of this kind, as a shopper's JPEG."""
    scale = float(rng.choice([2, 3, 4]))
    target = cut_out(product, scale)
    height, width = target[1].shape
    share = rng.uniform(0.4, 0.55) if kind == "person" else rng.uniform(0.4, 0.8)  # of the frame's longer side
    aspect = float(rng.choice([0.75, 1.0, 1.33]))  # width / height of the frame
    frame_h = max(height + 8, round(max(height, width / aspect) / share))
    frame_w = max(width + 8, round(frame_h * aspect))
    pad = round(0.12 * max(frame_h, frame_w))
    size = (frame_h + 2 * pad, frame_w + 2 * pad)
    if kind == "white":
        canvas = np.full(size + (3,), 255, np.float32)
    elif kind in TEXTURES:
        canvas = TEXTURES[kind](rng, *size)
    else:
        canvas = TEXTURES[str(rng.choice(["flat", "gradient", "wood", "fabric"]))](rng, *size)
    x = pad + int(rng.integers(0, frame_w - width + 1))
    if kind == "person":
        y = pad + int(rng.integers(round(0.3 * frame_h), max(round(0.3 * frame_h), frame_h - height) + 1))
    else:
        y = pad + int(rng.integers(0, frame_h - height + 1))
    if kind == "clutter":
        for other in others:
            paste(canvas, cut_out(other, scale * rng.uniform(0.7, 1.2)), *(int(v) for v in rng.integers(0, size[::-1])))
    if kind == "person":
        person(canvas, (x, y, width, height), rng)
    paste(canvas, target, x, y)
    if kind == "occluded":  # another product over a fifth to a third of it, from one side
        cover = cut_out(others[0], scale)
        side = rng.integers(4)
        share = rng.uniform(0.2, 0.35)
        ox = [x - cover[1].shape[1] + round(share * width), x + width - round(share * width), x, x][side]
        oy = [y, y, y - cover[1].shape[0] + round(share * height), y + height - round(share * height)][side]
        paste(canvas, cover, ox, oy)
    return finish(canvas, pad, rng)


def score(found: list[str], metadata: list[dict[str, str]], item: str, labels: dict[str, str]) -> list[float]:
    """R@1, R@5, then P@5 of type, colour and both over the 5 best other products."""
    others = [m for m, i in zip(metadata, found, strict=True) if i != item][:5]
    same = {label: np.array([m.get(label) == labels[label] for m in others], bool) for label in LABELS}
    both = same["articleType"] & same["baseColour"]
    per = [float(np.mean(same["articleType"])), float(np.mean(same["baseColour"])), float(np.mean(both))]
    return [float(found[:1] == [item]), float(item in found[:5]), *per]


@cache
def shipped() -> dict[str, object]:
    """garment.py's settings as shipped, read before any method setting changes them."""
    from fashionrec import garment

    return {"side": garment.U2NET_SIDE, "person": garment.PERSON_PART, "precision": garment.U2NET_PRECISION}


def configure(method: str) -> str:
    """Set garment.py's knobs from a method setting and return the method's name (see `embed`)."""
    from fashionrec import garment  # not in today's code, which runs with method None

    head, *options = method.split(",")
    name, _, side = head.partition("@")
    chosen = shipped() | dict(option.split("=", 1) for option in options)
    garment.U2NET_SIDE = int(side) if side else int(chosen["side"])  # type: ignore[call-overload]
    garment.PERSON_PART = str(chosen["person"])
    garment.U2NET_PRECISION = str(chosen["precision"])
    return name


def embed(recommender: Recommender, data: bytes, method: str | None) -> Query:
    """The query of a scene; `None` is today's call (no isolation argument), so the bench runs on old code.

    A method setting is a garment.py method with options: `u2netp@96` runs U2-Net-p at a 96-pixel input
    instead of garment.U2NET_SIDE; `auto,person=whole` keeps a photo of a person whole (`person=upper body`:
    its top; `person=ignore`: no pose model, `auto` as it was before people were looked for); `precision=f32`
    runs U2-Net-p in f32 where the CPU has bf16.
    """
    if method is None:
        return recommender.embed_image(data)
    recommender.forget_queries()  # settings of one method share its cache entry: each must do the work
    return recommender.embed_image(data, isolate=configure(method))  # type: ignore[arg-type]


def plain_shots(recommender: Recommender, catalog: Catalog, items: list[Item], method: str | None) -> dict[str, float]:
    """Exact R@1 and P@5 when the products' own catalog shots are the queries: isolation must not cost these.

    Each shot is sent as a PNG of its pixels: the catalog's own file is recognised by its hash and never
    isolated, so this measures what `auto` does to a catalog-like product shot from elsewhere."""
    marks = []
    for item in items:
        data = png(decode(catalog.source.read(item.image), item.image))  # not byte-identical to the catalog's file
        matches = recommender.similar(embed(recommender, data, method), k=6)
        marks.append(score([m.id for m in matches], [m.metadata for m in matches], item.id, item.metadata))
    return dict(zip(METRICS, np.mean(marks, axis=0).round(4).tolist(), strict=True)) | {"items": len(items)}


def shown(data: bytes, method: str | None) -> Image.Image:
    """The query photo for the contact sheet, beside what isolation kept of it."""
    photo = decode(data, "scene")
    if method is None or method == "none":
        return photo
    from fashionrec import garment

    kept = garment.isolate(photo, configure(method)).image  # type: ignore[arg-type]
    pair = Image.new("RGB", (photo.width * 2, photo.height), "white")
    pair.paste(photo, (0, 0))
    pair.paste(ImageOps.pad(kept, photo.size, color="white"), (photo.width, 0))
    return pair


def contact_sheet(rows: list[list[tuple[Image.Image, bool]]], path: Path, wide: bool) -> None:
    """One row per product, one tile per kind (the query, and what isolation kept), green when top-1 is right."""
    tile, frame = (240 if wide else 120, 120), 3
    step = (tile[0] + 2 * frame, tile[1] + 2 * frame)
    sheet = Image.new("RGB", (step[0] * len(KINDS), step[1] * len(rows) + 14), "white")
    for column, name in enumerate(KINDS):
        ImageDraw.Draw(sheet).text((column * step[0] + 2, 2), name, fill=(0, 0, 0))
    for row, images in enumerate(rows):
        for column, (image, hit) in enumerate(images):
            framed = ImageOps.expand(
                ImageOps.pad(image, tile, color="white"), frame, (40, 160, 60) if hit else (210, 40, 40)
            )
            sheet.paste(framed, (column * step[0], 14 + row * step[1]))
    sheet.save(path)


def chart(settings: dict[str, dict], weight: str, path: Path) -> None:
    """P@5 of type, colour and both, and R@1, per kind of scene and setting."""
    fig, axes = plt.subplots(2, 2, figsize=(14, 8), sharey=True)
    positions = np.arange(len(KINDS) + 1)
    bar = 0.8 / len(settings)
    for ax, metric in zip(axes.flat, ("type P@5", "colour P@5", "both P@5", "R@1"), strict=True):
        for n, (name, setting) in enumerate(settings.items()):
            values = [setting["figures"][weight][kind][metric] for kind in (*KINDS, "all")]
            ax.bar(positions + n * bar - 0.4 + bar / 2, values, bar, label=name)
        ax.set_xticks(positions, [*KINDS, "all"], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{metric} (colour weight {weight})", fontsize=10)
        ax.set_ylim(0, 1)
    axes[0, 0].legend(fontsize=8, title="setting")
    fig.suptitle("Catalog products in synthetic shoppers' scenes, per kind of scene")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="an index directory (Recommender.open)")
    parser.add_argument("--catalog", type=Path, default=SHARED_ZIP, help="where the query products' pixels come from")
    parser.add_argument("--items", type=int, default=500, help="sampled products, each put into every kind of scene")
    parser.add_argument("--queries", type=Path, help="a file of item ids (one a line) to sample the products from")
    parser.add_argument("--isolate", nargs="+", help="garment isolation methods (garment.py); default: today's call")
    parser.add_argument("--name", help="prefix of the settings' names in the results (default: the index folder)")
    parser.add_argument("--plain", type=int, default=0, help="also query this many products' own catalog shots")
    parser.add_argument("--results", default="world", help="the results' name: bench/results/NAME.json")
    parser.add_argument("--grid-items", type=int, default=6)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    recommender = Recommender.open(args.index)
    catalog = load_catalog(args.catalog)
    wanted = set(args.queries.read_text().split()) if args.queries else None
    pool = [
        item for item in catalog.items if item.id in recommender.positions and (wanted is None or item.id in wanted)
    ]
    items = random.Random(args.seed).sample(pool, min(args.items, len(pool)))
    methods: list[str | None] = list(args.isolate) if args.isolate else [None]
    prefix = args.name or args.index.name
    names = {method: f"{prefix}" if method is None else f"{prefix}-{method}" for method in methods}
    figures = {m: {w: {k: [] for k in KINDS} for w in WEIGHTS} for m in methods}
    latency: dict[str | None, list[float]] = {m: [] for m in methods}
    sheets: dict[str | None, list[list[tuple[Image.Image, bool]]]] = {m: [] for m in methods}
    recommender.embed_image(decode(catalog.source.read(items[0].image), "warm-up"))  # load the encoder first
    for n, item in enumerate(items):
        product = decode(catalog.source.read(item.image), item.image)
        rng = np.random.default_rng([args.seed, int(item.id) if item.id.isdigit() else n])
        others = [decode(catalog.source.read(o.image), o.image) for o in random.Random(item.id).sample(pool, 6)]
        labels = recommender.item(item.id).metadata
        scenes = {kind: scene(kind, product, [o for o in others if o is not product], rng) for kind in KINDS}
        for method in methods:
            row = []
            for kind, data in scenes.items():
                started = time.perf_counter()
                query = embed(recommender, data, method)
                matches = recommender.similar(query, k=6)
                latency[method].append((time.perf_counter() - started) * 1000)
                for weight in WEIGHTS:
                    if weight:
                        matches = recommender.similar(replace(query, colour_weight=weight), k=6)
                    marks = score([m.id for m in matches], [m.metadata for m in matches], item.id, labels)
                    figures[method][weight][kind].append(marks)
                if n < args.grid_items:
                    row.append((shown(data, method), bool(figures[method][0.0][kind][-1][2] == 1.0)))
            if n < args.grid_items:
                sheets[method].append(row)
        if n % 50 == 49:
            print(f"{n + 1}/{len(items)} products", flush=True)

    plain = {m: plain_shots(recommender, catalog, items[: args.plain], m) for m in methods} if args.plain else {}
    settings = {}
    for method in methods:
        per = {}
        for weight, kinds in figures[method].items():
            table = {
                kind: dict(zip(METRICS, np.mean(marks, axis=0).round(4).tolist(), strict=True))
                for kind, marks in kinds.items()
            }
            everything = np.concatenate([np.asarray(marks) for marks in kinds.values()])
            table["all"] = dict(zip(METRICS, everything.mean(axis=0).round(4).tolist(), strict=True))
            per[str(weight)] = table
        p50, p90 = np.percentile(latency[method], [50, 90]).round(1).tolist()
        settings[names[method]] = {
            "isolate": method or "today",
            "index": str(args.index),
            "figures": per,
            "latency_ms": {"p50": p50, "p90": p90},
        } | ({"plain_shots": plain[method]} if plain else {})
        print(names[method], json.dumps({w: per[w]["all"] for w in per}), f"p50 {p50} ms", flush=True)

    setup = {"index_items": len(recommender), "query_items": len(items), "kinds": list(KINDS), "seed": args.seed}
    previous = RESULTS / f"{args.results}.json"
    if previous.is_file():  # the same scenes, other settings: keep their figures so settings can be added run by run
        old = json.loads(previous.read_text())
        if all(old.get(key) == value for key, value in setup.items()):
            settings = old["settings"] | settings
    out = RESULTS / args.results
    out.mkdir(parents=True, exist_ok=True)
    for method, rows in sheets.items():
        contact_sheet(rows, out / f"samples_{names[method]}.png", wide=method not in (None, "none"))
    chart(settings, "0.35", out / "p5_by_kind.png")
    note = "P@5 over the 5 best products other than the query's own; R@1/R@5 of the query's own product"
    write_results(args.results, {**setup, "settings": settings, "note": note})


if __name__ == "__main__":
    main()
