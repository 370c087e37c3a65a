"""Colour-aware ranking: what the colour weight does to leave-one-out P@5 on the whole catalog.

python bench/colour.py [--index indexes/full]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import REPO, write_results

from fashionrec.quality.evaluate import evaluate
from fashionrec.search import Recommender

WEIGHTS = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=REPO / "indexes" / "full")
    args = parser.parse_args()
    recommender = Recommender.open(args.index)
    rows = []
    for weight in WEIGHTS:
        labels = evaluate(recommender, ["articleType", "baseColour"], [5], progress=False, colour_weight=weight)
        row = {"colour_weight": weight}
        for name, figures in labels["labels"].items():
            row[f"{name} P@5"] = round(figures["P@5"], 4)
            row[f"{name} macro P@5"] = round(figures["macro_P@5"], 4)
        print(row, flush=True)
        rows.append(row)
    write_results(
        "colour",
        {
            "index": str(args.index),
            "items": len(recommender),
            "search": recommender.info()["search"],
            "by_weight": rows,
        },
    )


if __name__ == "__main__":
    main()
