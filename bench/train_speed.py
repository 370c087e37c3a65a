"""Training speed (#16.4): 2 epochs of `fashionrec train` with torch's default threads, then with fashionrec's choice.

torch's default is one thread per core; `train` now takes one per idle core (quality/train.training_threads),
measured from the load average when it starts. Both runs train the default model from the same index (the
first --items of --index, copied with their stored vectors: nothing is embedded), one after the other in
one process, fresh model directories, no shopper-like views; the figures are the seconds of each epoch
(its batches and its held-out validation) and their ratio.

    python bench/train_speed.py [--index /work/indexes/full] [--items 10000] [--epochs 2] [--results train_speed]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from common import subset_index, write_results

from fashionrec.quality.config import TrainConfig
from fashionrec.quality.train import train, training_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("/work/indexes/full"))
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--results", default="train_speed")
    args = parser.parse_args()
    config = TrainConfig(epochs=args.epochs)
    runs: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as directory:
        index = subset_index(args.index, Path(directory) / "index", args.items)
        for label, threads in (("torch_default", torch.get_num_threads()), ("fashionrec_choice", 0)):
            load = os.getloadavg()[0]
            chosen = threads or training_threads()
            manifest = train(index, Path(directory) / label, config, progress=False, log=print, threads=threads)
            seconds = [round(record["seconds"], 1) for record in manifest["history"]]  # type: ignore[index]
            runs[label] = {"threads": chosen, "load_average_at_start": load, "epoch_seconds": seconds}
            print(label, runs[label], flush=True)
    before, after = (sum(runs[k]["epoch_seconds"]) for k in ("torch_default", "fashionrec_choice"))  # type: ignore[arg-type]
    write_results(
        args.results,
        {
            "command": f"python bench/train_speed.py --index {args.index} --items {args.items} --epochs {args.epochs}",
            "protocol": __doc__.split("\n\n")[1],
            "cores": len(os.sched_getaffinity(0)),
            "runs": runs,
            "speedup": round(before / after, 2),
        },
    )


if __name__ == "__main__":
    main()
