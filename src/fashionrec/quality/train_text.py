"""Train the text bridge (bridge.py) on an index: the catalog's names -> their images' stored vectors.

Contrastive (InfoNCE, both directions, in-batch negatives, a learnt temperature): in a batch, each
text must find its own product's image vector among the batch's, and each image its text. Texts
that are equal within a batch (a name shared by several products) are not each other's negatives.
A share of the texts are phrases of the product's metadata words in random order ("red tshirts
men"), as a shopper types them, and words of the names are dropped at random, so short queries
land too. The image vectors are the index's own (stored, not embedded again), so an epoch takes
seconds; the bridge is then searched with the index's own vectors.

Items are split as `fashionrec train` splits them (train.heldout_mask, same seed and share): a
bridge never sees the names or images of the items that the trained encoder held out, and the
benchmark (bench/text_search.py) measures it on them. `validation` holds out a further share of the
training items, to choose settings (the fusion of words and bridge) on items that are not the test.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fashionrec.bridge import BRIDGE_FORMAT, BUCKETS, DEFAULT_DIR, TextBridge, features
from fashionrec.index import IndexStore
from fashionrec.quality.config import BridgeConfig
from fashionrec.quality.train import TrainError, _read_all, heldout_mask
from fashionrec.text import NAME, item_text

PHRASE_COLUMNS = ("baseColour", "articleType", "gender", "usage", "subCategory", "season")
PHRASE_KEEP = {"articleType": 0.9, "baseColour": 0.7, "gender": 0.5}  # other columns: 0.2
EVAL_QUERIES = 2000  # held-out names measured at the end of training (R@1, R@10 among the held-out images)
MIN_TRAIN_ITEMS = 50


class BridgeNet(nn.Module):
    """The bridge in torch, for training: numpy serves it (bridge.TextBridge.embed, same arithmetic)."""

    def __init__(self, embed_dim: int, hidden: int, components: int, basis: np.ndarray) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(BUCKETS, embed_dim, mode="mean")
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.norm = nn.LayerNorm(embed_dim)
        self.w1 = nn.Linear(embed_dim, hidden)
        self.w2 = nn.Linear(hidden, components)
        self.register_buffer("basis", torch.from_numpy(basis))
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.w1(self.norm(self.embedding(ids, offsets))), approximate="tanh")
        return F.normalize(self.w2(hidden), dim=1)

    def weights(self) -> dict[str, np.ndarray]:
        def array(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy().astype(np.float32)

        return {
            "embedding": array(self.embedding.weight).astype(np.float16),  # half the file; read back as float32
            "norm_weight": array(self.norm.weight),
            "norm_bias": array(self.norm.bias),
            "w1": array(self.w1.weight),
            "b1": array(self.w1.bias),
            "w2": array(self.w2.weight),
            "b2": array(self.w2.bias),
            "basis": array(self.basis),
        }


def phrase(metadata: dict[str, str], rng: random.Random) -> str:
    """A shopper's query made of the product's metadata words, e.g. "red tshirts men"."""
    chosen = [
        metadata[c]
        for c in PHRASE_COLUMNS
        if metadata.get(c) not in (None, "", "NA") and rng.random() < PHRASE_KEEP.get(c, 0.2)
    ]
    rng.shuffle(chosen)
    return " ".join(chosen).lower() or item_text(metadata)


def training_text(metadata: dict[str, str], config: BridgeConfig, rng: random.Random) -> str:
    """One text for a product in an epoch: its name with some words dropped, or a phrase of its metadata."""
    name = metadata.get(NAME, "")
    if not name or rng.random() < config.phrase_share:
        return phrase(metadata, rng)
    kept = [word for word in name.split() if rng.random() >= config.word_dropout]
    return " ".join(kept) or name


def batch_inputs(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """EmbeddingBag inputs: every text's feature ids end to end, and where each text starts."""
    parts = [features(text) for text in texts]
    parts = [p if len(p) else np.zeros(1, dtype=np.int64) for p in parts]  # a text without words: bucket 0
    offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
    return torch.from_numpy(np.concatenate(parts)), torch.from_numpy(offsets)


def contrastive_loss(
    texts: torch.Tensor, images: torch.Tensor, scale: torch.Tensor, same: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives; `same` (off-diagonal equal texts) are no negatives."""
    logits = (scale * texts @ images.T).masked_fill(same, float("-inf"))
    target = torch.arange(len(texts))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def recall(queries: np.ndarray, gallery: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict:
    """R@k of queries whose target is row `targets[q]` of the gallery (inner product)."""
    ranks = []
    for start in range(0, len(queries), 512):
        scores = queries[start : start + 512] @ gallery.T
        own = scores[np.arange(len(scores)), targets[start : start + 512]]
        ranks.append((scores > own[:, None]).sum(axis=1))
    rank = np.concatenate(ranks) if ranks else np.zeros(0)
    return {f"R@{k}": round(float(np.mean(rank < k)), 4) if len(rank) else None for k in ks}


def principal_directions(vectors: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top principal directions [dim, components] of the training images' vectors.

    The bridge aims in this subspace only: a text vector q = basis @ c scores an image v as c . (basis.T v), so
    training compares with the images' projections (5x less work than the full vectors); the mean only adds
    the same q . mean to every image of a query, which changes no ranking.
    """
    mean = vectors.mean(axis=0)
    centred = (vectors - mean).astype(np.float64)
    _, eigenvectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    basis = eigenvectors[:, ::-1][:, : min(components, vectors.shape[1])]
    return mean.astype(np.float32), np.ascontiguousarray(basis, dtype=np.float32)


def split(ids: list[str], config: BridgeConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows to train on, to validate on and held out (the same held-out items as `fashionrec train`)."""
    heldout = heldout_mask(ids, config.holdout, config.seed)
    validation = ~heldout & heldout_mask(ids, config.validation, config.seed + 1)
    return np.flatnonzero(~heldout & ~validation), np.flatnonzero(validation), np.flatnonzero(heldout)


def train_bridge(
    index_dir: str | Path,
    out: str | Path | None = None,
    config: BridgeConfig = BridgeConfig(),
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TextBridge:
    """Train a text bridge for an index; saved in `out` (default: INDEX/text-bridge, where search finds it)."""
    index_dir = Path(index_dir)
    store = IndexStore.open(index_dir)
    try:
        if not store.manifest.get("complete"):
            raise TrainError(f"{index_dir}: the index is incomplete; finish it with `fashionrec index` first")
        items, vectors, _ = _read_all(store)
    finally:
        store.close()
    ids = [item.id for item in items]
    train_rows, validation_rows, heldout_rows = split(ids, config)
    if len(train_rows) < MIN_TRAIN_ITEMS:
        raise TrainError(f"{index_dir}: {len(train_rows)} items to train on; a text bridge needs {MIN_TRAIN_ITEMS}")
    log(
        f"Text bridge for {index_dir}: {len(train_rows)} training items, {len(validation_rows)} validation, "
        f"{len(heldout_rows)} held out (seed {config.seed}, share {config.holdout})"
    )
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    mean, basis = principal_directions(vectors[train_rows], config.components)
    images = torch.from_numpy((vectors - mean) @ basis)
    net = BridgeNet(config.embed_dim, config.hidden, basis.shape[1], basis)
    net.logit_scale.data.fill_(float(np.log(1 / config.temperature)))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(train_rows) // config.batch_size)
    total = steps_per_epoch * config.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=total, pct_start=0.1)
    started = time.perf_counter()
    bar = tqdm(total=total, unit="step", desc="Training the text bridge", disable=not progress, dynamic_ncols=True)
    history = []
    for epoch in range(1, config.epochs + 1):
        order = np.random.default_rng(config.seed + epoch).permutation(train_rows)
        losses = []
        for start in range(0, steps_per_epoch * config.batch_size, config.batch_size):
            rows = order[start : start + config.batch_size]
            texts = [training_text(items[r].metadata, config, rng) for r in rows]
            first: dict[str, int] = {}
            codes = torch.tensor([first.setdefault(text, n) for n, text in enumerate(texts)])
            same = (codes[:, None] == codes[None, :]) & ~torch.eye(len(rows), dtype=torch.bool)
            loss = contrastive_loss(net(*batch_inputs(texts)), images[rows], net.logit_scale.exp().clamp(max=100), same)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(1)
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4)})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", temperature=f"{1 / net.logit_scale.exp().item():.3f}")
    bar.close()
    bridge = TextBridge(store.manifest["encoder"]["id"], net.weights(), {})  # type: ignore[index]
    figures = {}
    for name, rows in (("heldout", heldout_rows), ("validation", validation_rows)):
        queries = rows[:: max(1, len(rows) // EVAL_QUERIES)][:EVAL_QUERIES]
        named = [r for r in queries if items[r].metadata.get(NAME)]
        if named:
            embedded = bridge.embed([items[r].metadata[NAME] for r in named])
            position = {row: n for n, row in enumerate(rows)}
            figures[name] = recall(embedded, vectors[rows], np.array([position[r] for r in named])) | {
                "queries": len(named),
                "gallery": len(rows),
            }
    seconds = time.perf_counter() - started
    manifest = {
        "format": BRIDGE_FORMAT,
        "index_dim": int(images.shape[1]),
        "buckets": BUCKETS,
        "config": asdict(config),
        "split": {
            "by": "train.heldout_mask: blake2b(f'{seed}:{id}') < holdout; validation: seed + 1 among the rest",
            "train_items": len(train_rows),
            "validation_items": len(validation_rows),
            "heldout_items": len(heldout_rows),
        },
        "evaluation": "product names query their own image among the split's images (inner product): R@1, R@10",
        "figures": figures,
        "history": history,
        "temperature": round(1 / net.logit_scale.exp().item(), 4),
        "training_seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    bridge = TextBridge(bridge.encoder_id, bridge.weights, manifest)
    target = Path(out) if out is not None else index_dir / DEFAULT_DIR
    bridge.save(target)
    log(f"Text bridge saved in {target}/ ({seconds:.0f} s); names finding their own image: {figures.get('heldout')}")
    return bridge
