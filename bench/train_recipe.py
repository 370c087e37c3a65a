"""Training recipes against the 10-minute target (#16.4): the time and the quality of `make run`'s training.

    python bench/train_recipe.py [--index /work/indexes/base] [--items 10000] [--recipes today,e12,e10]
        [--full-validation]

Every recipe trains from the same subset index (the first --items of --index, their stored vectors
copied: nothing is re-embedded but the shopper-like views), into its own model directory, one after
the other in one process. The views are the same for every recipe (same items, same split): the
first recipe embeds them, timed, and the others start from a copy. Per recipe: the seconds of its
epochs' training and of its validations, the whole call, the held-out P@5 per label that training
prints, and the exact-product R@1 of held-out items' views. `today` is `make run`'s recipe before
this change (16 epochs, validated after each); the time of a recipe that differs from another only in
how often it validates is that recipe's training seconds plus its validations (validation changes no
weight), so it is derived, not trained again.

With --full-validation it first times a validation of all of --index, of the subset, and of all again
(an untrained adapter of the same shape costs what a trained one does): how a validation grows from the
subset to the whole catalog. (`--recipes ""` runs only that.)

What it cannot see: the whole catalog's figures. Epochs scale with the training items (batches), a
validation faster (its search is held-out items x all items), so docs/performance.md extrapolates with
that ratio; and a subset has fewer batches per epoch, so fewer epochs cost it more quality than they
cost the whole catalog.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import subset_index, write_results

from fashionrec.encoders.adapter import ADAPTER_SETTINGS, Adapter
from fashionrec.encoders.trained import VIEWS
from fashionrec.index import IndexStore
from fashionrec.quality.config import TrainConfig
from fashionrec.quality.evaluate import label_values
from fashionrec.quality.train import (
    _read_all,
    _snapshot,
    class_targets,
    heldout_mask,
    train,
    training_threads,
    validate_adapter,
)

MAKE_RUN = {"epochs": 16, "view_share": 0.5, "base_weight": 0.6}  # the Makefile's recipe before #16.4
RECIPES: dict[str, tuple[dict[str, object], int]] = {  # name: (TrainConfig fields, validate every)
    "today": (MAKE_RUN, 1),
    "today_validate4": (MAKE_RUN, 4),  # derived from `today`
    "e12": (MAKE_RUN | {"epochs": 12}, 4),
    "e10": (MAKE_RUN | {"epochs": 10}, 5),
    "e8": (MAKE_RUN | {"epochs": 8}, 4),
    "now": (MAKE_RUN, 8),  # `make run` since #16.4: validated every 8 epochs
    "h1024": (MAKE_RUN | {"hidden": 1024}, 8),  # half the adapter's hidden width: about half its FLOPs
    "m2": (MAKE_RUN | {"members": 2}, 8),  # two members instead of three
}
DERIVED = {"today_validate4": "today"}


def run(name: str, index: Path, out: Path, views: Path | None) -> dict[str, object]:
    """Train one recipe; its seconds and quality."""
    fields, validate_every = RECIPES[name]
    if views is not None:
        out.mkdir(parents=True)
        shutil.copy(views, out / VIEWS)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    manifest = train(index, out, TrainConfig(**fields), progress=False, log=print, validate_every=validate_every)  # type: ignore[arg-type]
    history: list[dict] = manifest["history"]  # type: ignore[assignment]
    return {
        "config": fields,
        "validate_every": validate_every,
        "load_average_at_start": round(load, 2),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "epoch_train_seconds": [round(r["seconds"] - r["validate_seconds"], 1) for r in history],
        "validation_seconds": [round(r["validate_seconds"], 1) for r in history if r["validate_seconds"]],
        "P@5": {label: figures["P@5"] for label, figures in manifest["trained"].items()},  # type: ignore[union-attr]
        "view_exact_R@1": manifest["views"]["exact_R@1"],  # type: ignore[index]
        "view_queries": manifest["views"]["queries"],  # type: ignore[index]
    }


def full_validation(index: Path) -> dict[str, object]:
    """The seconds of one held-out validation of the whole `index`, as a validated epoch runs it (an untrained
    adapter of the same shape costs the same)."""
    store = IndexStore.open(index)
    items, vectors, colours = _read_all(store)
    config = TrainConfig(**MAKE_RUN)  # type: ignore[arg-type]
    heldout = heldout_mask([item.id for item in items], config.holdout, config.seed)
    values = label_values(_snapshot(items, vectors, colours), config.labels)
    counts = [len(class_targets(values[label], ~heldout)[1]) for label in config.labels]
    adapter = Adapter(store.dim, counts, **{key: getattr(config, key) for key in ADAPTER_SETTINGS})
    previous = torch.get_num_threads()
    torch.set_num_threads(threads := training_threads())
    load = os.getloadavg()[0]
    started = time.perf_counter()
    validate_adapter(adapter, items, vectors, colours, np.flatnonzero(heldout), config.labels, torch.device("cpu"))
    seconds = time.perf_counter() - started
    torch.set_num_threads(previous)
    store.close()
    figures = {"items": len(items), "heldout": int(heldout.sum()), "torch_threads": threads, "load_average": load}
    return figures | {"seconds": round(seconds, 1)}


def derive(base: dict[str, object], validate_every: int) -> dict[str, object]:
    """`base` as if validated every `validate_every` epochs: the same weights, fewer validations."""
    epochs = len(base["epoch_train_seconds"])  # type: ignore[arg-type]
    validations = sum(e % validate_every == 0 or e == epochs for e in range(1, epochs + 1))
    mean_validation = sum(base["validation_seconds"]) / len(base["validation_seconds"])  # type: ignore[arg-type]
    saved = (len(base["validation_seconds"]) - validations) * mean_validation  # type: ignore[arg-type]
    return base | {
        "validate_every": validate_every,
        "wall_seconds": round(base["wall_seconds"] - saved, 1),
        "derived": True,
    }  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("/work/indexes/base"))
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--recipes", default="today,today_validate4,e12,e10", help=f"of {', '.join(RECIPES)}")
    parser.add_argument("--results", default="train_recipe")
    parser.add_argument(
        "--full-validation", action="store_true", help="also time a validation of all of --index against the subset's"
    )
    args = parser.parse_args()
    names = [name for name in args.recipes.split(",") if name]  # --recipes "": the validation timing only
    runs: dict[str, dict[str, object]] = {}
    full = None
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as directory:
        index = subset_index(args.index, Path(directory) / "index", args.items)
        if args.full_validation:
            full = validation_scaling(args.index, index)
        views: Path | None = None
        for name in names:
            if name in DERIVED:
                runs[name] = derive(runs[DERIVED[name]], RECIPES[name][1])
            else:
                out = Path(directory) / name
                runs[name] = run(name, index, out, views)
                views = views or out / VIEWS
            print(name, runs[name], flush=True)
    trained = [name for name in names if name not in DERIVED]
    if not trained:
        write_results(args.results, {"command": command(args), "full_index_validation": full})
        return
    overhead = {name: outside_epochs(runs[name]) for name in trained}  # views (first only), zero-shot, export
    views_seconds = overhead[trained[0]] - min(overhead[n] for n in trained[1:]) if len(trained) > 1 else None
    print(f"{'recipe':>16} {'wall s':>7} {'train s':>8} {'valid s':>8}  P@5 per label, view R@1")
    for name, r in runs.items():
        p5 = "  ".join(f"{label} {value:.4f}" for label, value in r["P@5"].items())  # type: ignore[union-attr]
        seconds = f"{r['wall_seconds']:7.0f} {sum(r['epoch_train_seconds']):8.0f} {sum(r['validation_seconds']):8.0f}"  # type: ignore[arg-type]
        print(f"{name:>16} {seconds}  {p5}  R@1 {r['view_exact_R@1']:.4f}")
    print(f"shopper-like views embedded in about {views_seconds} s (first recipe's extra time)")
    write_results(
        args.results,
        {
            "command": command(args),
            "protocol": __doc__.split("\n\n")[1],
            "cores": len(os.sched_getaffinity(0)),
            "runs": runs,
            "views_seconds": views_seconds,
            "full_index_validation": full,
        },
    )


def command(args: argparse.Namespace) -> str:
    return f"python bench/train_recipe.py --index {args.index} --items {args.items} --recipes '{args.recipes}'" + (
        " --full-validation" if args.full_validation else ""
    )


def validation_scaling(full: Path, subset: Path) -> dict[str, object]:
    """A validation of the whole index, of the subset, then of the whole again: their seconds and the ratio."""
    runs = [full_validation(index) for index in (full, subset, full)]
    for figures in runs:
        print(f"one validation of all {figures['items']} items: {figures['seconds']} s", flush=True)
    whole = (runs[0]["seconds"] + runs[2]["seconds"]) / 2  # type: ignore[operator]
    return {"runs": runs, "full_over_subset": round(whole / runs[1]["seconds"], 2)}  # type: ignore[operator]


def outside_epochs(run: dict[str, object]) -> float:
    """A recipe's seconds outside its epochs and validations."""
    return run["wall_seconds"] - sum(run["epoch_train_seconds"]) - sum(run["validation_seconds"])  # type: ignore[operator, arg-type]


if __name__ == "__main__":
    main()
