"""One-off: an index of format 2 (float32 vectors inside index.sqlite) rewritten as format 3, without embedding again.

Format 3 keeps the records in index.sqlite and the vectors, once, in the index's store (float16 in
vectors.sqlite for the files store). Rebuilding with `fashionrec index` gives the same result from
the images; this reads the stored vectors instead, so measuring before/after (bench/store_size.py)
compares the very same vectors. It writes through `IndexStore.put`, as a build does.

    python bench/convert_index.py OLD_INDEX NEW_INDEX
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fashionrec.catalog import Item, Problem
from fashionrec.colour import COLOUR_DIM
from fashionrec.index import DATABASE, MANIFEST, IndexStore

BATCH = 2048


def convert(old: Path, new: Path) -> int:
    manifest = json.loads((old / MANIFEST).read_text())
    if manifest.get("format_version") != 2:
        raise SystemExit(f"{old}: format {manifest.get('format_version')}, this converts format 2 only")
    if (new / MANIFEST).exists():
        raise SystemExit(f"{new}: already an index; give a new directory")
    store = IndexStore.create_or_open(new, manifest["encoder"], manifest["catalog"])
    dim = store.dim
    with closing(sqlite3.connect(f"file:{old / DATABASE}?mode=ro", uri=True)) as db:
        total = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        cursor = db.execute("SELECT id, image, image_hash, metadata, vector, colour FROM items ORDER BY row")
        with tqdm(total=total, unit="item", desc="Converting") as bar:  # rate and ETA
            for rows in iter(lambda: cursor.fetchmany(BATCH), []):
                items = [Item(r[0], r[1], json.loads(r[3])) for r in rows]
                vectors = np.frombuffer(b"".join(r[4] for r in rows), np.float32).reshape(len(rows), dim)
                colours = np.frombuffer(b"".join(r[5] for r in rows), np.float32).reshape(len(rows), COLOUR_DIM)
                store.put(items, [r[2] for r in rows], vectors, colours)
                bar.update(len(rows))
        store.set_problems(Problem(*row) for row in db.execute("SELECT item, message, action FROM problems"))
    kept = {key: manifest[key] for key in ("created", "complete", "counts", "detail") if key in manifest}
    store.update_manifest(**kept)
    count = store.count()
    store.close()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    count = convert(args.old, args.new)
    print(f"{count} items converted into {args.new} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
