"""int8 against float encoders, side by side in one run: model speed and retrieval quality.

Protocol. A random subset of the shared catalog (--items, seed 0) is indexed twice with `build_index`,
by the float encoder and by its int8 version (encoders/int8.py: static QDQ, per-channel, calibrated on
300 photos of this subset, chosen by a hash of their id). Queries are the subset's items of the
held-out split of the trained model (--model's heldout_ids.txt: items whose labels training never saw).
- P@5 per label (articleType, baseColour, both): each query searches its own index, itself left out.
- Exact-product R@1: one shopper-like view of each query (views.shopper_view, seeded by its id, as
  training makes them) searches the index; a hit when its own product comes first.
- Model speed: images/s of `embed_pixels` on batches of 64 square photos, float and int8 alternating,
  at the encoder's own size and at 224 px; the best of --rounds per encoder.
With --trained, the trained model directory (copied: the int8 file is written beside its model.onnx) too.

    python bench/int8.py [--items 5000] [--trained] [--results int8]
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import catalog_subset, int8_cache, write_results

from fashionrec.build import build_index
from fashionrec.catalog import Catalog
from fashionrec.encoders import Encoder, load_encoder
from fashionrec.images import Detail, decode
from fashionrec.quality.evaluate import evaluate
from fashionrec.search import Recommender
from fashionrec.views import shopper_view

MODEL = Path("/work/models/views-inst-b6")
LABELS = ["articleType", "baseColour"]
SPEED_BATCH = 64


def model_speed(encoders: dict[str, Encoder], pixels: np.ndarray, rounds: int) -> dict[str, float]:
    """Images/s of each encoder's model on the same batch, encoders alternating so load hits them alike."""
    best = dict.fromkeys(encoders, float("inf"))
    for encoder in encoders.values():
        encoder.embed_pixels(pixels[:8])  # warm-up
    for _ in range(rounds):
        for name, encoder in encoders.items():
            started = time.perf_counter()
            encoder.embed_pixels(pixels)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: round(len(pixels) / seconds, 1) for name, seconds in best.items()}


def speed_batch(encoder: Encoder, catalog: Catalog) -> np.ndarray:
    """SPEED_BATCH photos of the catalog, as `encoder`'s model takes them."""
    items = catalog.items[:SPEED_BATCH]
    return np.stack([encoder.prepare(decode(catalog.source.read(item.image), item.id)) for item in items])


def view_recall(recommender: Recommender, catalog: Catalog, queries: list[str]) -> float:
    """Exact-product R@1 of one shopper-like view of each query item."""
    detail = Detail.from_dict(recommender.records.manifest.get("detail"))
    images = {item.id: item.image for item in catalog.items}
    hits = []
    for start in range(0, len(queries), 256):
        batch = queries[start : start + 256]
        views = []
        for item_id in batch:
            image = decode(catalog.source.read(images[item_id]), item_id)
            views.append(shopper_view(image, detail, random.Random(f"view:{item_id}")))
        vectors = recommender.encoder.embed(views)
        found = recommender.store.search(vectors, 1)
        hits += [bool(row) and row[0].id == item_id for row, item_id in zip(found, batch, strict=True)]
    return round(float(np.mean(hits)), 4)


def quality(index: Path, catalog: Catalog, queries: list[str]) -> dict[str, object]:
    recommender = Recommender.open(index)
    report = evaluate(recommender, LABELS, ks=[5], queries=queries, progress=False)
    figures = {name: round(values["P@5"], 4) for name, values in report["labels"].items()}  # type: ignore[union-attr]
    return {"encoder": recommender.encoder.id, "P@5": figures, "exact_R@1": view_recall(recommender, catalog, queries)}


def compare(name: str, catalog: Catalog, queries: list[str], work: Path, rounds: int) -> dict[str, object]:
    """Index the subset with `name` and `name:int8`, then measure both."""
    results: dict[str, object] = {}
    encoders = {"fp32": load_encoder(name), "int8": load_encoder(f"{name}:int8", calibration=catalog)}
    for precision, encoder in encoders.items():
        report = build_index(catalog, work / f"{precision}-{Path(name).name}", encoder, progress=False)
        results[precision] = {"index_images_per_s": round(report.rate, 1)} | quality(report.index, catalog, queries)
    own_size = encoders["fp32"].spec.size
    speed = {f"{own_size}px": model_speed(encoders, speed_batch(encoders["fp32"], catalog), rounds)}
    if own_size != 224 and not encoders["fp32"].id.startswith("trained:"):  # a trained model takes its own size only
        at_224 = {
            "fp32": load_encoder(name, size=224),
            "int8": load_encoder(f"{name}:int8", size=224, calibration=catalog),
        }
        speed["224px"] = model_speed(at_224, speed_batch(at_224["fp32"], catalog), rounds)
    results["model_images_per_s"] = {
        size: figures | {"int8_over_fp32": round(figures["int8"] / figures["fp32"], 2)}
        for size, figures in speed.items()
    }
    fp32, int8 = results["fp32"], results["int8"]
    results["int8_minus_fp32_points"] = {
        **{label: round(100 * (int8["P@5"][label] - fp32["P@5"][label]), 2) for label in fp32["P@5"]},  # type: ignore[index]
        "exact_R@1": round(100 * (int8["exact_R@1"] - fp32["exact_R@1"]), 2),  # type: ignore[operator]
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--model", type=Path, default=MODEL, help="trained model: its held-out split, and --trained")
    parser.add_argument("--trained", action="store_true", help="also compare the trained model and its int8 version")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", default="int8")
    args = parser.parse_args()
    catalog = catalog_subset(args.items, seed=0)
    heldout = set((args.model / "heldout_ids.txt").read_text().split())
    queries = [item.id for item in catalog.items if item.id in heldout]
    figures: dict[str, object] = {
        "command": f"python bench/int8.py --items {args.items}" + (" --trained" if args.trained else ""),
        "protocol": __doc__.split("\n\n")[1],
        "items": len(catalog.items),
        "queries": len(queries),
    }
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        int8_cache(work / "cache")
        figures["efficientnet-lite0"] = compare("efficientnet-lite0", catalog, queries, work, args.rounds)
        print(figures["efficientnet-lite0"])
        if args.trained:
            model = work / "model"
            model.mkdir()
            for name in ("fashionrec-model.json", "adapter.pt", "model.onnx", "heldout_ids.txt"):
                shutil.copy(args.model / name, model / name)
            figures["trained"] = compare(str(model), catalog, queries, work, args.rounds)
            print(figures["trained"])
    write_results(args.results, figures)


if __name__ == "__main__":
    main()
