"""Write speed of an index's store: `IndexStore.put` in build-sized batches, without the model.

Reads N real vectors from a format-2 index (float32 in index.sqlite, as /work/indexes/full), then
writes them into a fresh index as a build does (256 a batch, each batch committed). Runs with the
code before and after a change alike (the same `create_or_open` and `put`), so the two compare.

    PYTHONPATH=src python bench/store_write.py /work/indexes/full --name after [--items 20000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np
from common import write_results

from fashionrec.catalog import Item
from fashionrec.colour import COLOUR_DIM
from fashionrec.index import IndexStore

BATCH = 256  # what a build commits at once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a format-2 index to read vectors from")
    parser.add_argument("--name", required=True)
    parser.add_argument("--items", type=int, default=20_000)
    args = parser.parse_args()
    manifest = json.loads((args.source / "manifest.json").read_text())
    dim = manifest["encoder"]["dim"]
    with closing(sqlite3.connect(f"file:{args.source / 'index.sqlite'}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT id, image, image_hash, metadata, vector, colour FROM items ORDER BY row LIMIT ?", (args.items,)
        ).fetchall()
    items = [Item(r[0], r[1], json.loads(r[3])) for r in rows]
    vectors = np.frombuffer(b"".join(r[4] for r in rows), np.float32).reshape(len(rows), dim)
    colours = np.frombuffer(b"".join(r[5] for r in rows), np.float32).reshape(len(rows), COLOUR_DIM)
    with tempfile.TemporaryDirectory() as directory:
        store = IndexStore.create_or_open(Path(directory) / "idx", manifest["encoder"], manifest["catalog"])
        started = time.perf_counter()
        for start in range(0, len(items), BATCH):
            part = slice(start, start + BATCH)
            store.put(items[part], [r[2] for r in rows[part]], vectors[part], colours[part])
        seconds = time.perf_counter() - started
        store.close()
        size = sum(path.stat().st_size for path in (Path(directory) / "idx").iterdir() if path.is_file())
    figures = {
        "source": str(args.source),
        "items": len(items),
        "put_s": round(seconds, 2),
        "items_per_s": round(len(items) / seconds),
        "bytes_written": size,
    }
    print(figures)
    write_results(f"store_write_{args.name}", figures)


if __name__ == "__main__":
    main()
