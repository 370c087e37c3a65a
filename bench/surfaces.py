"""What the surfaces redesign changes in time: the explore page's map, and a photo searched again.

1. The explore page's first map: computed (t-SNE of 3,000 products: what the app did on first opening, and
   what `fashionrec index` now does once, explore.write_map) versus read from the file it writes.
2. The same photo searched again with other settings (what the app does on every slider move): the first
   `similar_to_image` embeds it, later ones reuse the Recommender's cached query.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/surfaces.py [--index /work/indexes/full] [--photos 20]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from common import SHARED_ZIP, write_results

from fashionrec.explore import read_map, write_map
from fashionrec.search import Recommender


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("/work/indexes/full"))
    parser.add_argument("--photos", type=int, default=20)
    args = parser.parse_args()
    recommender = Recommender.open(args.index)

    with tempfile.TemporaryDirectory() as folder:  # write_map writes into the index: a copy of it
        index = Path(shutil.copytree(args.index, Path(folder) / "index"))
        started = time.perf_counter()
        path = write_map(index, log=print)  # what `fashionrec index` now does once, and the app did before
        computed_s = time.perf_counter() - started
        started = time.perf_counter()
        stored = read_map(index)  # what the app does now
        assert stored is not None
        known = recommender.positions
        kept = np.array([known[i] for i in stored["ids"] if i in known])
        read_s = time.perf_counter() - started
        size = path.stat().st_size
    print(
        f"explore map of {len(kept):,} products: computed {computed_s:.1f} s, read {read_s * 1000:.1f} ms "
        f"({computed_s / read_s:,.0f}x faster; file {size / 1024:.0f} KiB)"
    )

    with zipfile.ZipFile(SHARED_ZIP) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith("images/") and n.endswith(".jpg"))
        photos = [archive.read(n) for n in names[1000 : 1000 + args.photos]]
    first, again = [], []
    for photo in photos:
        for times, weight in ((first, 0.0), (again, 0.4)):
            started = time.perf_counter()
            recommender.similar_to_image(photo, 5, colour_weight=weight)
            times.append(time.perf_counter() - started)
    first_ms, again_ms = 1000 * float(np.median(first)), 1000 * float(np.median(again))
    print(
        f"a photo searched again with another colour weight: {again_ms:.1f} ms vs {first_ms:.1f} ms the first "
        f"time ({first_ms / again_ms:.1f}x faster; median of {len(photos)} photos)"
    )
    write_results(
        "surfaces",
        {
            "index": str(args.index),
            "items": len(recommender),
            "explore_map": {
                "products": len(kept),
                "computed_s": round(computed_s, 2),
                "read_ms": round(read_s * 1000, 2),
                "speedup": round(computed_s / read_s),
                "file_kib": round(size / 1024),
            },
            "photo_again": {
                "photos": len(photos),
                "first_ms": round(first_ms, 1),
                "again_ms": round(again_ms, 1),
                "speedup": round(first_ms / again_ms, 1),
            },
        },
    )


if __name__ == "__main__":
    main()
