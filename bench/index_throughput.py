"""Index throughput: `fashionrec index` end to end on the shared catalog, against the seed-style pipeline.

1. Where the time goes, per stage (read, decode, fit/resize, colour, model, store), on a subset.
2. The seed-style pipeline on a 1,000-image subset: one image at a time through the torch model,
   then scikit-learn NearestNeighbors(brute, euclidean) refit for every query, as the reference
   projects did; and fashionrec on the same subset.
3. `fashionrec index` on the whole catalog (44k), a fresh index, end to end, as a user runs it.

    python bench/index_throughput.py [--full-items N] [--skip-full]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SHARED_ZIP, catalog_subset, write_results

from fashionrec.build import build_index
from fashionrec.colour import colour_vector
from fashionrec.encoders import Encoder, load_encoder
from fashionrec.images import decode, fit_square
from fashionrec.index import IndexStore
from fashionrec.search import Recommender

SEED_QUERIES = 50


def stage_profile(items: int, encoder: Encoder | None = None) -> dict[str, float]:
    """Seconds per 1,000 images for each stage, run one after the other on one process (default encoder)."""
    catalog = catalog_subset(items, seed=1)
    encoder = encoder or load_encoder()
    size, fit = encoder.spec.size, encoder.spec.fit
    started = time.perf_counter()
    raw = [catalog.source.read(item.image) for item in catalog.items]
    read = time.perf_counter() - started
    started = time.perf_counter()
    images = [decode(data, "x", min_side=size) for data in raw]
    decoding = time.perf_counter() - started
    started = time.perf_counter()
    pixels = np.stack([fit_square(image, size, fit) for image in images])
    fitting = time.perf_counter() - started
    started = time.perf_counter()
    colours = np.stack([colour_vector(square) for square in pixels])
    colouring = time.perf_counter() - started
    encoder.embed_pixels(pixels[:64])  # warm-up
    started = time.perf_counter()
    vectors = encoder.embed_pixels(pixels)
    model = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as directory:
        store = IndexStore.create_or_open(directory, encoder.spec.to_dict(), catalog.describe())
        started = time.perf_counter()
        for start in range(0, len(vectors), 256):
            batch = slice(start, start + 256)
            store.put(catalog.items[batch], ["h"] * len(vectors[batch]), vectors[batch], colours[batch])
        storing = time.perf_counter() - started
    per_thousand = 1000 / items
    stages = {
        "read": read,
        "decode": decoding,
        "fit_resize": fitting,
        "colour": colouring,
        "model": model,
        "store": storing,
    }
    total = sum(stages.values())
    return {
        **{f"{name}_s_per_1000": round(value * per_thousand, 3) for name, value in stages.items()},
        **{f"{name}_share": round(value / total, 3) for name, value in stages.items()},
    }


def seed_style(items: int) -> dict[str, float]:
    """The reference recipe: a per-image predict loop, and a kNN refit on every query."""
    import torch
    from sklearn.neighbors import NearestNeighbors

    from fashionrec.encoders import BACKBONES
    from fashionrec.encoders.backbones import embedding_net

    catalog = catalog_subset(items, seed=2)
    net = embedding_net(BACKBONES["efficientnet-lite0"]())
    started = time.perf_counter()
    vectors = []
    for item in catalog.items:
        pixels = fit_square(decode(catalog.source.read(item.image), item.id), 224, "pad")
        with torch.no_grad():
            vectors.append(net(torch.from_numpy(pixels[None])).numpy()[0])
    embed_seconds = time.perf_counter() - started
    matrix = np.stack(vectors)
    started = time.perf_counter()
    for query in matrix[:SEED_QUERIES]:
        NearestNeighbors(n_neighbors=6, algorithm="brute", metric="euclidean").fit(matrix).kneighbors([query])
    query_ms = (time.perf_counter() - started) / SEED_QUERIES * 1000

    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        build_index(catalog, directory, load_encoder(), progress=False)
        ours_seconds = time.perf_counter() - started
        recommender = Recommender.open(directory)
        started = time.perf_counter()
        for item in recommender.items[:SEED_QUERIES]:
            recommender.similar_to_item(item.id, k=5)
        ours_query_ms = (time.perf_counter() - started) / SEED_QUERIES * 1000
    return {
        "items": items,
        "seed_style_images_per_s": round(items / embed_seconds, 1),
        "fashionrec_images_per_s": round(items / ours_seconds, 1),
        "index_speedup": round(embed_seconds / ours_seconds, 1),
        "seed_style_query_ms": round(query_ms, 2),
        "fashionrec_item_query_ms": round(ours_query_ms, 3),
        "query_speedup": round(query_ms / ours_query_ms, 1),
    }


def full_build(index_dir: Path) -> dict[str, float]:
    """`fashionrec index` on the whole catalog, as a user runs it (fresh index, cached ONNX file)."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fashionrec.cli", "index", str(SHARED_ZIP), "--out", str(index_dir)], check=True
    )
    seconds = time.perf_counter() - started
    count = IndexStore.open(index_dir).count()
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "items": count,
        "wall_s": round(seconds, 1),
        "images_per_s": round(count / seconds, 1),
        "peak_rss_mb": round(peak_mb),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile-items", type=int, default=2000)
    parser.add_argument("--seed-items", type=int, default=1000)
    parser.add_argument("--skip-full", action="store_true", help="Skip the 44k end-to-end build.")
    parser.add_argument("--keep", type=Path, help="Build the full index here and keep it (default: a temp dir).")
    args = parser.parse_args()
    figures: dict[str, object] = {"encoder": load_encoder().id}
    figures["stages"] = stage_profile(args.profile_items)
    print("stages:", figures["stages"], flush=True)
    figures["seed_style_vs_fashionrec"] = seed_style(args.seed_items)
    print("seed style:", figures["seed_style_vs_fashionrec"], flush=True)
    if not args.skip_full:
        with tempfile.TemporaryDirectory() as directory:
            figures["full_catalog"] = full_build(args.keep or Path(directory) / "idx")
        print("full catalog:", figures["full_catalog"], flush=True)
    write_results("index_throughput", figures)


if __name__ == "__main__":
    main()
