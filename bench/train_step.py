"""#16.4: seconds of one training step of `make run`'s adapter, with torch's dropout / fashionrec's, per-tensor /
fused AdamW, and its matrix products in f32 / bf16 (`fashionrec train --precision`; "auto" picks bf16 where the
CPU computes it natively: elsewhere it is emulated, and slower).

One step is what `fashionrec train` does per batch (quality/train.batch_loss, backward, the optimizer's
update) at make run's shapes: 1,024 items of which half are views with their catalog shots as anchors,
the default adapter (3 members, hidden 2048), the base encoder's 1280-d vectors and the colour vectors.
The inputs are random: dense products take the same time whatever the numbers. The variants take turns
round by round (best of --rounds, each --steps steps), so load from other work weighs on each alike.
What it cannot see: the rest of an epoch (gathering the batch, the held-out validation) and the views.

    python bench/train_step.py [--rounds 4] [--steps 5] [--results train_step]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from common import write_results
from torch import nn

from fashionrec.colour import COLOUR_DIM
from fashionrec.encoders.adapter import ADAPTER_SETTINGS, DROPOUT, Adapter
from fashionrec.encoders.runtimes import cpu_has_bf16
from fashionrec.quality.config import TrainConfig
from fashionrec.quality.train import batch_loss

BASE_DIM = 1280
CLASSES = (104, 47)  # articleType and baseColour classes of the shared catalog's training split
GROUPS = 1500


def step_timer(torch_dropout: bool, fused: bool, config: TrainConfig, bf16: bool = False) -> Callable[[], None]:
    """A function that runs one training step (a batch of config.batch_size) of a fresh adapter with these settings."""
    rows = config.batch_size
    torch.manual_seed(0)
    adapter = Adapter(BASE_DIM, CLASSES, **{key: getattr(config, key) for key in ADAPTER_SETTINGS})
    if torch_dropout:
        for member in adapter.members:
            member.net[3] = nn.Dropout(DROPOUT)
    adapter.train()
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=config.lr, weight_decay=1e-4, fused=fused)
    inputs = (torch.randn(rows, BASE_DIM), torch.rand(rows, COLOUR_DIM))
    anchored = torch.rand(rows) < config.view_share
    anchors = (torch.randn(int(anchored.sum()), BASE_DIM), torch.rand(int(anchored.sum()), COLOUR_DIM))
    groups = torch.randint(0, GROUPS, (rows,))
    targets = torch.stack([torch.randint(0, count, (rows,)) for count in CLASSES], dim=1)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = batch_loss(adapter, inputs, groups, targets, anchors, anchored, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--results", default="train_step")
    args = parser.parse_args()
    config = TrainConfig(view_share=0.5)
    variants = {
        "torch dropout, per-tensor AdamW": (True, False, False),
        "torch dropout, fused AdamW": (True, True, False),
        "fashionrec dropout, per-tensor AdamW": (False, False, False),
        "fashionrec dropout, fused AdamW (fashionrec train, f32)": (False, True, False),
        "the same in bf16 (fashionrec train where the CPU has bf16)": (False, True, True),
    }
    steps = {name: step_timer(dropout, fused, config, bf16) for name, (dropout, fused, bf16) in variants.items()}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in steps.items():
            step()  # warm
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds[name].append((time.perf_counter() - started) / args.steps)
    before = min(seconds[next(iter(variants))])
    figures = {}
    for name, values in seconds.items():
        figures[name] = {"best_s": round(min(values), 4), "each_round_s": [round(v, 4) for v in values]}
        figures[name]["speedup"] = round(before / min(values), 2)
        print(f"{name:60s} {min(values):.3f} s a step  {before / min(values):.2f}x", flush=True)
    write_results(
        args.results,
        {
            "command": f"python bench/train_step.py --rounds {args.rounds} --steps {args.steps}",
            "threads": torch.get_num_threads(),
            "cpu has bf16": cpu_has_bf16(),
            "batch": config.batch_size,
            "view_share": config.view_share,
            "variants": figures,
        },
    )


if __name__ == "__main__":
    main()
