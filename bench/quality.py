"""Retrieval quality on the whole shared catalog: `fashionrec eval` over a full index.

Builds the index first if it is not there (`fashionrec index` on the shared zip), then writes
bench/results/quality.json and the charts under bench/results/quality/ (the sample grid of catalog
photos stays out of the repository: see .gitignore).

    python bench/quality.py [--index indexes/full] [--search exact]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from common import REPO, RESULTS, SHARED_ZIP, write_results

from fashionrec.quality.evaluate import evaluate
from fashionrec.search import Recommender

LABELS = ["articleType", "baseColour"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=REPO / "indexes" / "full")
    parser.add_argument("--search", default="exact", choices=["auto", "exact", "ivf"])
    parser.add_argument("--precision", default="float32", choices=["float32", "float16"])
    parser.add_argument("--name", default="quality", help="Results file name (bench/results/NAME.json).")
    args = parser.parse_args()
    if not (args.index / "manifest.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "fashionrec.cli", "index", str(SHARED_ZIP), "--out", str(args.index)], check=True
        )
    recommender = Recommender.open(args.index, kind=args.search, precision=args.precision)
    report = evaluate(recommender, LABELS, [1, 5, 10], out=RESULTS / args.name)
    summary = {
        name: {key: round(value, 4) for key, value in figures.items() if "@" in key and "per_class" not in key}
        for name, figures in report["labels"].items()
    }
    for name, figures in summary.items():
        print(name, figures)
    write_results(
        args.name,
        {
            "encoder": report["encoder"],
            "items": report["items"],
            "search": recommender.info()["search"],
            "figures": summary,
        },
    )


if __name__ == "__main__":
    main()
