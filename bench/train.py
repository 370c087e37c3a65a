"""Train on the whole shared catalog (`fashionrec train` on the full index) and compare with zero-shot.

Writes bench/results/train.json: the validation figures of every epoch and the final table of
zero-shot vs trained P@5 (held-out items searching the whole catalog, micro and macro), what each
part of the trained vector adds (one member or all, with or without the class probabilities), plus
the measured cost of the alternative, fine-tuning the last backbone blocks on CPU (`--finetune-probe`).

    python bench/train.py [--index indexes/full] [--out indexes/trained-full] [--epochs 40] [--results train]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, SHARED_ZIP, catalog_subset, write_results

from fashionrec.encoders import BACKBONES
from fashionrec.encoders.adapter import load_adapter
from fashionrec.encoders.backbones import embedding_net
from fashionrec.encoders.trained import ADAPTER
from fashionrec.images import decode, fit_square
from fashionrec.index import IndexStore
from fashionrec.quality.config import TrainConfig
from fashionrec.quality.train import _read_all, heldout_mask, train, validate_adapter

LABELS = ("articleType", "baseColour")


def finetune_probe(blocks: int, images: int = 64, batch: int = 32) -> dict[str, object]:
    """Images/s of one training step through the backbone with its last `blocks` blocks (and head) trainable."""
    net = embedding_net(BACKBONES["efficientnet-lite0"]())
    backbone = net.features.net  # type: ignore[attr-defined]
    for parameter in backbone.parameters():
        parameter.requires_grad = False
    trainable = [*backbone._blocks[-blocks:], backbone._conv_head, backbone._bn1]
    for module in trainable:
        for parameter in module.parameters():
            parameter.requires_grad = True
    catalog = catalog_subset(images)
    pixels = np.stack(
        [
            fit_square(decode(catalog.source.read(item.image), item.image, min_side=160), 160, "pad")
            for item in catalog.items
        ]
    )
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    net.train()
    started = time.perf_counter()
    for start in range(0, len(pixels), batch):
        loss = net(torch.from_numpy(pixels[start : start + batch])).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rate = len(pixels) / (time.perf_counter() - started)
    return {
        "trainable_blocks": blocks,
        "images_per_s": round(rate, 1),
        "hours_per_epoch_35k": round(35_500 / rate / 3600, 2),
    }


def ablation(index: Path, model: Path, manifest: dict) -> dict[str, dict[str, float]]:
    """Held-out P@5 of parts of the trained vector: one member or all, with or without the other parts."""
    store = IndexStore.open(index)
    items, vectors, colours = _read_all(store)
    store.close()
    heldout = np.flatnonzero(
        heldout_mask([item.id for item in items], manifest["split"]["holdout"], manifest["split"]["seed"])
    )
    adapter = load_adapter(manifest["adapter"], model / ADAPTER)
    members, label_weight, base_weight = adapter.members, float(adapter.label_weight), float(adapter.base_weight)
    many = f"{len(members)} members"
    found = {}
    for name, count, with_labels, with_base in (
        ("one member, no class probabilities", 1, False, False),
        ("one member + class probabilities", 1, True, False),
        (f"{many}, no class probabilities", len(members), False, False),
        (f"{many} + class probabilities", len(members), True, False),
        (f"{many} + class probabilities + base vector", len(members), True, True),
    ):
        adapter.members = members[:count]
        adapter.label_weight.fill_(label_weight if with_labels else 0.0)
        adapter.base_weight.fill_(base_weight if with_base else 0.0)
        figures = validate_adapter(adapter, items, vectors, colours, heldout, manifest["labels"], torch.device("cpu"))
        found[name] = {label: round(f["P@5"], 4) for label, f in figures.items()}
        print(name, found[name])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=REPO / "indexes" / "full")
    parser.add_argument("--out", type=Path, default=REPO / "indexes" / "trained-full")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--results", default="train", help="Name of the results file in bench/results.")
    parser.add_argument("--finetune-probe", action="store_true", help="Also time a partial backbone fine-tune.")
    args = parser.parse_args()
    if not (args.index / "manifest.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "fashionrec.cli", "index", str(SHARED_ZIP), "--out", str(args.index)], check=True
        )
    manifest = train(args.index, args.out, TrainConfig(LABELS, epochs=args.epochs))
    table = {
        label: {
            "zero_shot_P@5": round(manifest["zero_shot"][label]["P@5"], 4),
            "trained_P@5": round(manifest["trained"][label]["P@5"], 4),
            "zero_shot_macro_P@5": round(manifest["zero_shot"][label]["macro_P@5"], 4),
            "trained_macro_P@5": round(manifest["trained"][label]["macro_P@5"], 4),
        }
        for label in manifest["zero_shot"]
    }
    for label, figures in table.items():
        print(label, figures)
    write_results(
        args.results,
        {
            "command": f"python bench/train.py --index {args.index} --epochs {args.epochs} --results {args.results}",
            "base_encoder": manifest["base_encoder"]["id"],
            "trained_encoder": manifest["encoder"]["id"],
            "split": manifest["split"],
            "config": manifest["config"],
            "evaluation": manifest["evaluation"],
            "training_seconds": round(manifest["training_seconds"], 1),
            "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
            "table": table,
            "epochs": manifest["history"],
            "ablation_P@5": ablation(args.index, args.out, manifest),
            "finetune_probe": [finetune_probe(blocks) for blocks in (2, 4)] if args.finetune_probe else None,
        },
    )


if __name__ == "__main__":
    main()
