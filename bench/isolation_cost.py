"""What the query-side steps for shoppers' photos cost per query: isolation (U2-Net-p per input side, the
border method), `auto` as shipped and as it was (U2-Net-p for every photo not framed like a catalog shot),
finding a person's body (pose.py) and the garment regions, against a plain query, in one run.

The photos are world.py's scenes (every kind, the same for every step); the steps run interleaved, photo
by photo, so a busy machine slows them alike: read the ratios, and the CPU time (the process's, all its
threads) as the cost a query takes from the machine. The query is `Recommender.embed_image` then
`similar` (k=6), as on every surface, with the query cache emptied before every call (it would otherwise
answer every step after the first for the same photo and method). Per step: p50 over all photos and per
kind of scene (`auto` is cheap on plain backdrops and dear on busy scenes).

    python bench/isolation_cost.py --index /work/indexes/base --photos 45 [--name isolation_cost] [--skip STEP ...]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import SHARED_ZIP, write_results
from world import KINDS, configure, scene

from fashionrec import pose
from fashionrec.catalog import load_catalog
from fashionrec.images import decode
from fashionrec.search import Recommender

SIDES = (128, 160)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--name", default="isolation_cost", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--skip", nargs="+", default=[], help="steps left out (their names, as printed)")
    args = parser.parse_args()

    recommender = Recommender.open(args.index)
    catalog = load_catalog(SHARED_ZIP)
    pool = [item for item in catalog.items if item.id in recommender.positions]
    items = random.Random(args.seed).sample(pool, args.photos)
    photos = []
    for n, item in enumerate(items):
        product = decode(catalog.source.read(item.image), item.image)
        others = [decode(catalog.source.read(o.image), o.image) for o in random.Random(item.id).sample(pool, 2)]
        photos.append(scene(KINDS[n % len(KINDS)], product, others, np.random.default_rng([args.seed, n])))

    def query(method: str) -> Callable[[bytes], object]:
        def run(data: bytes) -> object:
            recommender.forget_queries()
            return recommender.similar(recommender.embed_image(data, None, configure(method)), k=6)  # type: ignore[arg-type]

        return run

    steps: dict[str, Callable[[bytes], object]] = {
        "plain query": query("none"),
        "border query": query("border"),
        **{f"u2netp {side} query": query(f"u2netp@{side}") for side in SIDES},
        "auto query (as before: no pose)": query("auto,person=ignore"),
        "u2netp 160 query (f32)": query("u2netp@160,precision=f32"),
        "auto query (f32)": query("auto,precision=f32"),
        "auto query (shipped)": query("auto"),
        "pose landmarks": lambda data: pose.landmarks(decode(data, "photo")),
        "regions": recommender.regions,
    }
    steps = {name: step for name, step in steps.items() if name not in args.skip}
    for step in steps.values():  # load every model first
        step(photos[0])
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for data in photos:
        for name, step in steps.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            step(data)
            wall[name].append((time.perf_counter() - started) * 1000)
            cpu[name].append((time.process_time() - started_cpu) * 1000)
    configure("auto")  # back to garment.py's settings as shipped
    plain = float(np.median(wall["plain query"]))
    kinds = np.array([KINDS[n % len(KINDS)] for n in range(len(photos))])
    figures = {
        name: {
            "wall p50 ms": round(float(np.median(wall[name])), 1),
            "cpu p50 ms": round(float(np.median(cpu[name])), 1),
            "x plain query (wall)": round(float(np.median(wall[name])) / plain, 2),
            "cpu p50 ms per kind": {
                kind: round(float(np.median(np.array(cpu[name])[kinds == kind])), 1) for kind in KINDS
            },
        }
        for name in steps
    }
    for name, row in figures.items():
        print(f"{name:18s} {row}")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else []
    write_results(args.name, {"index": str(args.index), "photos": len(photos), "load": load, "steps": figures})


if __name__ == "__main__":
    main()
