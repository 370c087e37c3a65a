"""Outfits (issue #13): a photo of a person wearing two catalog products, searched whole or one region per garment.

A shopper's photo of a person in a shirt and jeans, queried whole, matches neither garment well. This
makes such photos from real people: catalog shots of a model wearing a top (Tshirts, Shirts, Tops; 60x80,
enlarged 4x), where the pose model (pose.py) finds the body, with a catalog bottom (Jeans, Trousers,
Shorts, Track Pants) cut out of its white backdrop and put on from the hips down, scaled to the hips;
then world.py's light, rotation and JPEG. Each garment is then searched from the whole photo and from the
region `Recommender.regions` finds for it ("upper body" for the top, "lower body" for the bottom; the
whole photo when that region was not found), with and without garment isolation. Measured per garment:
exact R@1, and type / colour / both P@5 over the 5 best *other* products (world.py's `score`), the
regions found, and the cost of finding regions against a plain query, p50 in the same run.

It also counts how often the pose model finds a person in world.py's drawn "person" scenes (a skin-coloured
head, arms and legs around a product) and in the catalog's own shots of models.

What it cannot see: the top is the very catalog photo (enlarged), so its pixels match its catalog shot
exactly; a pasted bottom has no folds, no shading from the body, and hides the model's own legs only
where it covers them; people here stand upright, face the camera and fill the frame, as catalog models
do (a shopper's mirror selfie, a sitting person, a crowd are not here).

    python bench/outfits.py --index /work/indexes/full --outfits 100
    python bench/outfits.py --index /work/indexes/views-inst-b6 --outfits 100 --name trained-b6
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import RESULTS, SHARED_ZIP, write_results
from PIL import Image, ImageDraw
from world import configure, cut_out, finish, paste, scene, score

from fashionrec import garment, pose
from fashionrec.catalog import Catalog, Item, load_catalog
from fashionrec.images import decode
from fashionrec.search import Recommender

OUT = RESULTS / "outfits"
TOPS = ("Tshirts", "Shirts", "Tops")
BOTTOMS = ("Jeans", "Trousers", "Shorts", "Track Pants")
ENLARGE = 4  # the catalog's 60x80 shot of the model, enlarged to 240x320 (a phone photo holds more detail)
WEIGHTS = (0.0, 0.35)
METRICS = ("R@1", "R@5", "type P@5", "colour P@5", "both P@5")
SETTINGS = {  # name -> (searched part, isolation: a world.py method setting)
    "whole photo": ("whole", "none"),
    "whole photo, isolated": ("whole", "u2netp"),
    "whole photo, auto (default)": ("whole", "auto"),
    "whole photo, auto, U2-Net-p in f32 where the CPU has bf16": ("whole", "auto,precision=f32"),
    "whole photo, auto, a person kept whole": ("whole", "auto,person=whole"),
    "whole photo, auto, no pose model": ("whole", "auto,person=ignore"),
    "whole photo, auto, the closer of upper body and whole": ("whole", "auto,person=upper body or whole"),
    "region": ("region", "none"),
    "region, isolated": ("region", "u2netp"),
}
REGION_OF = {"top": "upper body", "bottom": "lower body"}


def enlarged(data: bytes, name: str) -> Image.Image:
    image = decode(data, name)
    return image.resize((image.width * ENLARGE, image.height * ENLARGE), Image.Resampling.LANCZOS)


def outfit(person: Image.Image, hips: np.ndarray, bottom: Image.Image, rng: np.random.Generator) -> bytes:
    """The person with the bottom put on from the hips down (twice as wide as the hip joints are apart)."""
    hip_width = float(abs(hips[1, 0] - hips[0, 0]))
    waist = float(hips[:, 1].mean()) - 0.25 * hip_width
    probe = cut_out(bottom, 1.0)
    layer = cut_out(bottom, max(0.5, 2.0 * hip_width / probe[1].shape[1]))
    height = max(person.height, round(waist + layer[1].shape[0] * 1.04))
    pixels = np.asarray(person, np.float32)
    canvas = np.empty((height, person.width, 3), np.float32)
    canvas[:] = np.median(pixels[-1], axis=0)  # the backdrop goes on below the shot: its bottom row's colour
    canvas[: person.height] = pixels
    paste(canvas, layer, round(float(hips[:, 0].mean()) - layer[1].shape[1] / 2), round(waist))
    return finish(canvas, 0, rng)


def queries(recommender: Recommender, data: bytes, found: list[garment.Region]) -> dict[str, dict[str, list]]:
    """Each setting's matches (k=6, per colour weight) for each garment: the whole photo, or its region."""
    results: dict[str, dict[str, list]] = {}
    for setting, (part, isolate) in SETTINGS.items():
        results[setting] = {}
        for garment_name, kind in REGION_OF.items():
            box = next((r.box for r in found if r.kind == kind), None) if part == "region" else None
            recommender.forget_queries()  # settings of one method share its cache entry: each must do the work
            query = recommender.embed_image(data, box, configure(isolate))  # type: ignore[arg-type]
            results[setting][garment_name] = [
                recommender.similar(replace(query, colour_weight=weight), k=6) for weight in WEIGHTS
            ]
    return results


def detection_rates(catalog: Catalog, items: list[Item], people: list[Item]) -> dict[str, object]:
    """How often the pose model finds a body: in world.py's drawn person scenes, and in catalog shots of models."""
    drawn = 0
    for n, item in enumerate(items):
        rng = np.random.default_rng([13, n])
        data = scene("person", decode(catalog.source.read(item.image), item.image), [], rng)
        drawn += pose.landmarks(decode(data, "scene")) is not None
    real = sum(pose.landmarks(enlarged(catalog.source.read(i.image), i.image)) is not None for i in people)
    return {
        "world person scenes": {"scenes": len(items), "person found": round(drawn / max(1, len(items)), 4)},
        "catalog shots of tops (models)": {"shots": len(people), "person found": round(real / max(1, len(people)), 4)},
    }


def draw(data: bytes, found: list[garment.Region]) -> Image.Image:
    image = decode(data, "outfit")
    canvas = ImageDraw.Draw(image)
    for region, colour in zip(found, ("red", "blue", "green", "orange"), strict=False):
        left, top, right, bottom = region.box
        box = (left * image.width, top * image.height, right * image.width - 1, bottom * image.height - 1)
        canvas.rectangle(box, outline=colour, width=2)
        canvas.text((box[0] + 3, box[1] + 2), region.kind, fill=colour)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="an index directory (Recommender.open)")
    parser.add_argument("--outfits", type=int, default=100)
    parser.add_argument("--name", default="base", help="the run's name in bench/results/outfits.json")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    recommender = Recommender.open(args.index)
    catalog = load_catalog(SHARED_ZIP)
    pool = [item for item in catalog.items if item.id in recommender.positions]
    random.Random(args.seed).shuffle(pool)
    tops = [item for item in pool if item.metadata.get("articleType") in TOPS]
    bottoms = [item for item in pool if item.metadata.get("articleType") in BOTTOMS]
    recommender.embed_image(enlarged(catalog.source.read(tops[0].image), tops[0].image))  # load the encoder

    marks = {s: {g: {w: [] for w in WEIGHTS} for g in REGION_OF} for s in SETTINGS}
    kinds_found: dict[str, int] = {}
    timing: dict[str, list[float]] = {"plain query": [], "regions": [], "isolated query": [], "auto query": []}
    tried, sheet = 0, []
    for top in tops:
        if len(sheet) >= args.outfits:
            break
        tried += 1
        person = enlarged(catalog.source.read(top.image), top.image)
        body = pose.landmarks(person)
        if body is None or not (body.visibility[list(pose.HIPS)] >= garment.VISIBLE).all():
            continue
        bottom = bottoms[len(sheet) % len(bottoms)]
        rng = np.random.default_rng([args.seed, int(top.id)])
        data = outfit(
            person, body.points[list(pose.HIPS)], decode(catalog.source.read(bottom.image), bottom.image), rng
        )
        started = time.perf_counter()
        found = recommender.regions(data)
        timing["regions"].append((time.perf_counter() - started) * 1000)
        for name, isolate in (("plain query", "none"), ("isolated query", "u2netp"), ("auto query", "auto")):
            recommender.forget_queries()
            started = time.perf_counter()
            recommender.similar(recommender.embed_image(data, None, configure(isolate)), k=6)  # type: ignore[arg-type]
            timing[name].append((time.perf_counter() - started) * 1000)
        for region in found:
            kinds_found[region.kind] = kinds_found.get(region.kind, 0) + 1
        for setting, per_garment in queries(recommender, data, found).items():
            for garment_name, by_weight in per_garment.items():
                item = top if garment_name == "top" else bottom
                labels = recommender.item(item.id).metadata
                for weight, matches in zip(WEIGHTS, by_weight, strict=True):
                    found_ids = [m.id for m in matches]
                    marks[setting][garment_name][weight].append(
                        score(found_ids, [m.metadata for m in matches], item.id, labels)
                    )
        sheet.append(draw(data, found))
        if len(sheet) % 25 == 0:
            print(f"{len(sheet)} outfits ({tried} model shots tried)", flush=True)

    figures = {
        setting: {
            garment_name: {
                str(weight): dict(zip(METRICS, np.mean(values, axis=0).round(4).tolist(), strict=True))
                for weight, values in per_weight.items()
            }
            for garment_name, per_weight in per_garment.items()
        }
        for setting, per_garment in marks.items()
    }
    latency = {name: round(float(np.percentile(values, 50)), 1) for name, values in timing.items()}
    outfits = len(sheet)
    rates = detection_rates(catalog, pool[:100], tops[:100])
    result = {
        "index": str(args.index),
        "outfits": outfits,
        "model shots tried": tried,
        "regions found (share of outfits)": {kind: round(n / outfits, 4) for kind, n in sorted(kinds_found.items())},
        "figures": figures,
        "latency_p50_ms": latency,
        "detection": rates,
    }
    for setting in SETTINGS:
        print(setting, json.dumps({g: figures[setting][g]["0.0"] for g in REGION_OF}))
    print("p50 ms", latency, "regions", result["regions found (share of outfits)"], "detection", rates)
    path = RESULTS / "outfits.json"
    runs = json.loads(path.read_text())["runs"] if path.is_file() else {}
    write_results("outfits", {"runs": runs | {args.name: result}})
    OUT.mkdir(parents=True, exist_ok=True)
    grid = Image.new("RGB", (8 * 200, 2 * 300), "white")
    for n, image in enumerate(sheet[:16]):
        image.thumbnail((200, 300))
        grid.paste(image, ((n % 8) * 200, (n // 8) * 300))
    grid.save(OUT / f"samples_{args.name}.png")  # catalog pixels: not committed (.gitignore)


if __name__ == "__main__":
    main()
