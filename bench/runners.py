"""Build runners: the local runner against the Ray runner (and, optionally, the build before the runner seam).

Each contender builds a fresh index of the same catalog subset in its own process, one after the
other in one run, so the ratios compare like with like on a busy machine. Per contender: images/s
end to end, the steady rate once the first batch is stored, start-up overhead (wall time minus what
the steady rate needs for the images), and the peak memory of the whole process tree (driver, decoding
workers, Ray's own processes and actors). Then what bounds a cluster: the driver reads and hashes
every image and writes every batch, so its rates cap what added nodes can give.

    python bench/runners.py [--items 5000] [--baseline 497b1e6] [--no-ray] [--rounds 1]

`--baseline REF` adds the local build of git REF (the code before the runner seam) as a contender;
with `--rounds R` each contender builds R times, in alternating order, and its median run is reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, catalog_subset, write_results

POLL_SECONDS = 0.2


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants (Linux /proc), in MB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
        lines = [line for line in status.splitlines() if line.startswith("VmRSS")]  # none for a zombie
        rss[int(entry.name)] = int(lines[0].split()[1]) if lines else 0
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / 1024


def stored(index: Path) -> int:
    try:
        with sqlite3.connect(index / "index.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def child(runner: str, out: str, items: int) -> None:
    """The build itself, in a process of its own: `baseline` is the old code (no runner argument)."""
    from fashionrec.build import build_index
    from fashionrec.encoders import load_encoder

    options = {} if runner == "baseline" else {"runner": runner}
    report = build_index(catalog_subset(items, seed=3), out, load_encoder(), progress=False, **options)
    assert report.embedded == report.total, report


def contender(name: str, items: int, directory: Path, source: Path) -> dict[str, float | None]:
    """Run one build in a child process, watching its stored count and its memory."""
    out = directory / name
    env = {**os.environ, "PYTHONPATH": str(source), "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--child", name, str(out), str(items)], env=env)
    first: tuple[float, int] | None = None
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, tree_rss_mb(process.pid))
        if first is None and (count := stored(out)) > 0:
            first = (time.perf_counter() - started, count)
        time.sleep(POLL_SECONDS)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{name} build failed (exit {process.returncode})")
    total = stored(out)
    first = first or (wall, 0)
    if total > first[1]:
        steady = (total - first[1]) / (wall - first[0])
        startup: float | None = round(wall - total / steady, 1)
    else:  # everything was stored at once: too few images to tell start-up from work
        steady, startup = total / wall, None
    figures = {
        "items": total,
        "wall_s": round(wall, 1),
        "images_per_s": round(total / wall, 1),
        "first_batch_s": round(first[0], 1),
        "steady_images_per_s": round(steady, 1),
        "startup_s": startup,
        "peak_rss_mb": round(peak),
    }
    print(name, figures, flush=True)
    return figures


def driver_ceiling(items: int) -> dict[str, float]:
    """What the driver alone can do per second: read and hash images (the plan), and commit batches."""
    # Imported here, not at the top: the baseline's child process runs this file on code without them.
    from fashionrec.build import plan_build
    from fashionrec.colour import COLOUR_DIM
    from fashionrec.index import IndexStore
    from fashionrec.runners.stages import COMMIT_EVERY

    catalog = catalog_subset(items, seed=3)
    started = time.perf_counter()
    plan = plan_build(catalog, {})
    read = len(plan.new) / (time.perf_counter() - started)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((COMMIT_EVERY, 1280), dtype=np.float32)
    colours = rng.random((COMMIT_EVERY, COLOUR_DIM), dtype=np.float32)
    with tempfile.TemporaryDirectory() as directory:
        store = IndexStore.create_or_open(directory, {"id": "bench", "dim": 1280}, catalog.describe())
        batches = [catalog.items[start : start + COMMIT_EVERY] for start in range(0, len(catalog.items), COMMIT_EVERY)]
        started = time.perf_counter()
        for batch in batches[:-1]:  # whole batches only
            store.put(batch, ["h"] * COMMIT_EVERY, vectors, colours)
        write = COMMIT_EVERY * (len(batches) - 1) / (time.perf_counter() - started)
        store.close()
    return {"read_hash_images_per_s": round(read), "write_images_per_s": round(write)}


def baseline_source(ref: str, directory: Path) -> Path:
    """The src/ folder of git REF, extracted into `directory`."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory / "src"


def ratio(results: dict[str, dict[str, float | None]], one: str, other: str, key: str) -> float:
    return round(results[one][key] / results[other][key], 2)


def median_run(runs: list[dict[str, float | None]]) -> dict[str, float | None]:
    """The run with the median steady rate (the lower middle one of an even count)."""
    return sorted(runs, key=lambda run: run["steady_images_per_s"] or 0.0)[(len(runs) - 1) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--baseline", help="Also build with the local build of this git ref (before the seam).")
    parser.add_argument("--no-ray", action="store_true", help="Only local (and baseline): the before/after check.")
    parser.add_argument("--rounds", type=int, default=1, help="Rounds of all contenders, in alternating order.")
    parser.add_argument("--results", help="the results' name: bench/results/NAME.json (default: by contenders)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        sources = {"local": REPO / "src"} | ({} if args.no_ray else {"ray": REPO / "src"})
        if args.baseline:
            sources["baseline"] = baseline_source(args.baseline, work)
        runs: dict[str, list[dict[str, float | None]]] = {name: [] for name in sources}
        for round_ in range(args.rounds):
            for name in list(sources)[:: 1 if round_ % 2 == 0 else -1]:  # no contender always runs first
                shutil.rmtree(work / name, ignore_errors=True)
                runs[name].append(contender(name, args.items, work, sources[name]))
    results = {name: median_run(each) for name, each in runs.items()}
    figures: dict[str, object] = {"items": args.items, "rounds": args.rounds, "runners": results, "runs": runs}
    if "ray" in results:
        ceiling = driver_ceiling(args.items)
        per_core = (results["ray"]["steady_images_per_s"] or 0.0) / (os.cpu_count() or 1)
        figures |= {
            "ray_vs_local_steady": ratio(results, "ray", "local", "steady_images_per_s"),
            "ray_vs_local_end_to_end": ratio(results, "ray", "local", "images_per_s"),
            "driver": ceiling,
            "ray_images_per_s_per_core": round(per_core, 1),
            "nodes_until_driver_bound_16_cores": round(min(ceiling.values()) / (16 * per_core), 1),
        }
    if args.baseline:
        figures["baseline_ref"] = args.baseline
        figures["local_vs_baseline_steady"] = ratio(results, "local", "baseline", "steady_images_per_s")
        figures["local_vs_baseline_end_to_end"] = ratio(results, "local", "baseline", "images_per_s")
    for key, value in figures.items():
        if key not in ("runners", "runs"):
            print(f"{key}: {value}")
    default = "runners" if "ray" in results else "runners-local-before-after"
    write_results(args.results or default, figures)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
