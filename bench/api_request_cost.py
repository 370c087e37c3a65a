"""What serving adds to one request: the API (FastAPI's TestClient, in process, one request at a time) against
the library call it makes, per kind of request; optionally the code of another checkout side by side.

    python bench/api_request_cost.py INDEX_DIR [--requests 200] [--rounds 3] [--baseline-src /work/main/src]

Each side runs in its own process (its `src` on PYTHONPATH), the sides alternating round by round, so
both see the same load, and within a side each API request is followed by its library call; per
request: the median of wall milliseconds and of CPU milliseconds of the whole process (all its threads).
One client, so no queueing: what is left over the library call is the serving path itself, thread hops
included (each waits for a worker thread to be scheduled, which on a busy machine can take milliseconds).
Writes bench/results/api_request_cost.json.

What it cannot see: contention between concurrent requests (bench/api_load.py measures that), and
the network (TestClient calls the app directly).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import SHARED_ZIP, write_results

KINDS = ("similar (id)", "item (id)", "search (upload)")


def measure_here(index: Path, requests: int) -> dict[str, dict[str, float]]:
    """In this process: per kind, the API's and the library's wall and CPU milliseconds a request."""
    import zipfile

    from fastapi.testclient import TestClient

    from fashionrec.api import create_app

    figures: dict[str, dict[str, float]] = {}
    with TestClient(create_app(index)) as client:
        recommender = client.app.state.recommender  # type: ignore[attr-defined]
        ids = random.Random(0).sample([item.id for item in recommender.snapshot.items], requests)
        with zipfile.ZipFile(SHARED_ZIP) as archive:
            photos = [archive.read(f"images/{i}.jpg") for i in ids[:20] if f"images/{i}.jpg" in archive.namelist()]
        calls = {
            "similar (id)": (
                lambda i, n: client.get(f"/v1/items/{i}/similar", params={"k": 10}),
                lambda i, n: recommender.similar_to_item(i, 10),
            ),
            "item (id)": (lambda i, n: client.get(f"/v1/items/{i}"), lambda i, n: recommender.item(i)),
            "search (upload)": (
                lambda i, n: client.post("/v1/search", files={"image": ("q.jpg", photos[n % len(photos)])}),
                lambda i, n: recommender.similar_to_image(photos[n % len(photos)], 10),
            ),
        }
        for kind, (api, library) in calls.items():
            api(ids[0], 0), library(ids[0], 0)  # warm
            samples: dict[str, list[tuple[float, float]]] = {"api": [], "library": []}
            for n, item_id in enumerate(ids):  # interleaved: both see the same moment's load
                for name, call in (("api", api), ("library", library)):
                    wall, cpu = time.perf_counter(), time.process_time()
                    call(item_id, n)
                    samples[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            figures[kind] = {
                f"{name}_{unit}_ms": round(1000 * statistics.median(s[column] for s in taken), 3)
                for name, taken in samples.items()
                for column, unit in enumerate(("wall", "cpu"))
            }
            for unit in ("wall", "cpu"):  # what serving adds to the library call
                figures[kind][f"serving_{unit}_ms"] = round(
                    figures[kind][f"api_{unit}_ms"] - figures[kind][f"library_{unit}_ms"], 3
                )
    return figures


def side(index: Path, requests: int, src: Path | None) -> dict[str, dict[str, float]]:
    """One round of one side, in a fresh process running the code of `src` (default: this checkout's)."""
    env = os.environ | ({"PYTHONPATH": str(src.resolve())} if src else {})
    command = [sys.executable, __file__, str(index), "--requests", str(requests), "--child"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", type=Path)
    parser.add_argument("--requests", type=int, default=200, help="requests of each kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, help="also measure the code of this src folder, alternating")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_here(args.index, args.requests)))
        return
    sources = {"baseline": args.baseline_src, "current": None} if args.baseline_src else {"current": None}
    rounds: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in sources}
    load = os.getloadavg()
    for number in range(args.rounds):
        for name, src in sources.items():
            rounds[name].append(side(args.index, args.requests, src))
            print(f"round {number + 1}/{args.rounds} {name}: {rounds[name][-1]}", flush=True)
    medians = {
        name: {kind: {key: statistics.median(r[kind][key] for r in runs) for key in runs[0][kind]} for kind in KINDS}
        for name, runs in rounds.items()
    }
    for name, kinds in medians.items():
        for kind, figures in kinds.items():
            print(f"{name:>8} {kind:>16}: " + "  ".join(f"{key} {value:.2f}" for key, value in figures.items()))
    ratios = (
        {
            kind: {key: round(medians["current"][kind][key] / medians["baseline"][kind][key], 2) for key in figures}
            for kind, figures in medians["current"].items()
        }
        if args.baseline_src
        else None
    )
    if ratios:
        print(f"current / baseline: {ratios}")
    write_results(
        "api_request_cost",
        {
            "command": f"python bench/api_request_cost.py {args.index} --requests {args.requests} --rounds "
            f"{args.rounds}" + (f" --baseline-src {args.baseline_src}" if args.baseline_src else ""),
            "load_average_before": [round(x, 2) for x in load],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "medians_of_rounds": medians,
            "current_over_baseline": ratios,
            "rounds": rounds,
        },
    )


if __name__ == "__main__":
    main()
