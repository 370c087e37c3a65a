"""How the image is fitted to the model's input changes what it sees: measure pad vs crop and input size.

Builds one index per setting over the same random subset of the shared catalog and reports
leave-one-out P@5 (articleType, baseColour) and indexing throughput for each.

    python bench/preprocessing.py --items 4000
"""

from __future__ import annotations

import argparse
import tempfile

from common import catalog_subset, write_results

from fashionrec.build import build_index
from fashionrec.encoders import load_encoder
from fashionrec.quality.evaluate import evaluate
from fashionrec.search import Recommender

SETTINGS = [("pad", 224), ("crop", 224), ("pad", 160), ("pad", 128)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=4000)
    args = parser.parse_args()
    catalog = catalog_subset(args.items)
    rows = []
    for fit, size in SETTINGS:
        encoder = load_encoder(size=size, fit=fit)
        with tempfile.TemporaryDirectory() as directory:
            report = build_index(catalog, directory, encoder, progress=False)
            quality = evaluate(Recommender.open(directory), ["articleType", "baseColour"], [5], progress=False)
        labels = quality["labels"]
        row = {
            "fit": fit,
            "size": size,
            "images_per_s": round(report.rate, 1),
            **{f"{name} P@5": round(labels[name]["P@5"], 4) for name in labels},
            **{f"{name} macro P@5": round(labels[name]["macro_P@5"], 4) for name in labels},
        }
        print(row, flush=True)
        rows.append(row)
    write_results(
        "preprocessing",
        {
            "items": len(catalog.items),
            "settings": rows,
            "note": "leave-one-out within the subset; throughput measured while other work ran",
        },
    )


if __name__ == "__main__":
    main()
