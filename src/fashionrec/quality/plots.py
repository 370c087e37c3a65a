"""Pictures of an evaluation that a person reads at a glance: per-class bars, confusions, sample grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageOps  # noqa: E402

from fashionrec.images import ImageError, decode  # noqa: E402
from fashionrec.quality.neighbours import Neighbours  # noqa: E402
from fashionrec.search import Recommender  # noqa: E402

TILE = (96, 128)
GOOD, BAD = (40, 160, 60), (210, 40, 40)
MAX_BARS = 60


def write_all(
    recommender: Recommender, neighbours: Neighbours, report: dict, labels: Sequence[str], out: Path, samples: int
) -> None:
    for name, figures in report["labels"].items():
        slug = name.replace("+", "_")
        per_class_chart(name, figures, out / f"per_class_p5_{slug}.png")
        confusion_chart(name, figures, out / f"confusions_{slug}.png")
    sample_grid(recommender, neighbours, labels[0], out / f"samples_{labels[0]}.png", samples)


def per_class_chart(name: str, figures: dict, path: Path) -> None:
    """Horizontal bars of P@5 per class, worst at the top, with the overall macro average marked.

    With more than MAX_BARS classes only the worst and best halves are drawn (the JSON has them all).
    """
    per_class = sorted(figures["per_class_P@5"].items(), key=lambda pair: pair[1])
    if not per_class:
        return
    if len(per_class) > MAX_BARS:
        per_class = per_class[: MAX_BARS // 2] + per_class[-MAX_BARS // 2 :]
    height = max(3.0, 0.22 * len(per_class) + 1.2)
    fig, ax = plt.subplots(figsize=(8, height))
    classes, values = zip(*per_class, strict=True)
    ax.barh(classes, values, color=[plt.cm.RdYlGn(v) for v in values])
    if figures.get("macro_P@5") is not None:
        ax.axvline(figures["macro_P@5"], color="black", linestyle="--", label=f"macro P@5 {figures['macro_P@5']:.3f}")
        ax.legend(loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_xlabel("P@5 (share of the top 5 with the same label)")
    ax.set_title(f"{name}: P@5 per class (classes with >= 20 items)")
    ax.tick_params(axis="y", labelsize=7)
    _save(fig, path)


def confusion_chart(name: str, figures: dict, path: Path) -> None:
    """The class pairs most often confused in the top 5: what the model mistakes for what."""
    pairs = figures["top_confusions"]
    if not pairs:
        return
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(pairs) + 1.2))
    ax.barh([f"{p['query']} -> {p['result']}" for p in pairs][::-1], [p["count"] for p in pairs][::-1], color="#c0504d")
    ax.set_xlabel("wrong results in the top 5")
    ax.set_title(f"{name}: most confused pairs (query class -> result class)")
    ax.tick_params(axis="y", labelsize=8)
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tile(recommender: Recommender, position: int, border: tuple[int, int, int] | None) -> Image.Image:
    item = recommender.items[position]
    try:
        image = decode(recommender.image_bytes(item.id), item.id)
    except (ImageError, OSError):
        image = Image.new("RGB", TILE, (230, 230, 230))
    tile = ImageOps.pad(image, TILE, color=(255, 255, 255))
    if border is not None:
        tile = ImageOps.expand(tile.crop((4, 4, TILE[0] - 4, TILE[1] - 4)), border=4, fill=border)
    return tile


def sample_grid(recommender: Recommender, neighbours: Neighbours, label: str, path: Path, samples: int) -> None:
    """Rows of query + top 5; a green border where a result shares the query's label, red where not."""
    rng = np.random.default_rng(0)
    rows = rng.choice(len(neighbours.queries), size=min(samples, len(neighbours.queries)), replace=False)
    caption = 16
    width, height = TILE[0] * 6 + 20, (TILE[1] + caption) * len(rows)
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    values = recommender.metadata[label]
    for line, row in enumerate(rows):
        query = int(neighbours.queries[row])
        top = (TILE[1] + caption) * line
        grid.paste(_tile(recommender, query, None), (0, top))
        draw.text((2, top + TILE[1] + 2), str(values.iloc[query])[:16], fill=(0, 0, 0))
        for column, (position, sim) in enumerate(
            zip(neighbours.positions[row][:5], neighbours.scores[row][:5], strict=True), start=1
        ):
            same = values.iloc[int(position)] == values.iloc[query]
            x = TILE[0] * column + 20
            grid.paste(_tile(recommender, int(position), GOOD if same else BAD), (x, top))
            draw.text((x + 2, top + TILE[1] + 2), f"{sim:.2f} {str(values.iloc[int(position)])[:10]}", fill=(0, 0, 0))
    grid.save(path)
