"""Train on your own catalog: an adapter over the frozen encoder's vectors, fitted to the catalog's labels.

Why an adapter: the index already stores the backbone's vectors, so an epoch reads them instead of
decoding and embedding every image again; it takes seconds on 2 CPU cores, where a training step
through even the last backbone blocks makes an epoch take minutes (bench/train.py measures both).
The adapter is a small ensemble of MLPs (-> unit vectors), each learning from one classification
head per label and a supervised contrastive loss on all labels at once, which pulls together the
items that share every label; its output also carries the heads' class probabilities (Adapter).
Its input is the backbone vector and the item's colour vector (colour.py, also stored in the index)
side by side: pooled ImageNet features keep little colour, the 77-number histogram keeps it well.

Items are split by a hash of their id: training never sees the held-out items' labels. Every few
epochs (`validate_every`) and after the last one, the held-out items query the whole catalog with the
project's own evaluation (P@5 per label, micro and macro); every epoch is checkpointed atomically,
and rerunning the command resumes after the last checkpoint. The result is a model directory (see
encoders/trained.py) that `index` takes as its `--encoder`: the ONNX graph is backbone + adapter, so
embedding an image and projecting its stored vector give the same result.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fashionrec.build import build_index
from fashionrec.catalog import Item, load_catalog
from fashionrec.colour import COLOUR_DIM
from fashionrec.encoders import BACKBONES, TRAINED_MANIFEST, EncoderSpec, load_encoder
from fashionrec.encoders.adapter import ADAPTER_SETTINGS, Adapter, TrainedNet
from fashionrec.encoders.backbones import embedding_net
from fashionrec.encoders.runtimes import cpu_has_bf16, export_onnx
from fashionrec.encoders.trained import (
    ADAPTER,
    CHECKPOINT,
    HELDOUT,
    MODEL_FORMAT,
    ONNX,
    VIEWS,
    colour_inputs,
    trained_spec,
)
from fashionrec.encoders.weights import file_sha256
from fashionrec.images import Detail
from fashionrec.index import (
    MANIFEST,
    UPLOADED,
    IndexStore,
    IndexStoreError,
    StoredItem,
    write_bytes_atomic,
    write_json_atomic,
)
from fashionrec.quality.config import VALIDATE_EVERY, Precision, TrainConfig
from fashionrec.quality.evaluate import label_values, nearest, score
from fashionrec.remote import index_images
from fashionrec.runners.local import LocalRunner
from fashionrec.runners.stages import ToEmbed
from fashionrec.search import Snapshot
from fashionrec.stores import SearchSettings
from fashionrec.stores.files import FilesStore
from fashionrec.views import ViewDecoder

MIN_ITEMS = 100  # fewer items cannot both train and leave a held-out split worth measuring
MIN_TRAIN_CLASS = 10  # label values with fewer training items are learnt together as OTHER
OTHER = "(other)"
EVAL_K = 5
BATCH = 8192  # vectors projected at a time
IDLE_SAMPLE_S = 0.5  # how long training watches the cores before choosing its threads
VIEW_QUERIES = 1000  # held-out items whose view looks for its own product, before and after training


class TrainError(ValueError):
    """Bad input for training (too few items, an unusable index, other settings in the model directory)."""


class TrainInterrupted(RuntimeError):
    """Training was stopped (Ctrl-C); every finished epoch is checkpointed."""


def heldout_mask(ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Held out by a hash of (seed, id): the same items for a seed, whatever the catalog's order or other items."""

    def draw(item_id: str) -> float:
        digest = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest) / 2**64

    return np.array([draw(item_id) < fraction for item_id in ids], dtype=bool)


def class_targets(values: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each item's class number; missing values and values with few training items become OTHER (last)."""
    counts = Counter(values[train])
    classes = sorted(value for value, n in counts.items() if n >= MIN_TRAIN_CLASS and value != "")
    number = {value: n for n, value in enumerate(classes)}
    return np.array([number.get(value, len(classes)) for value in values], dtype=np.int64), [*classes, OTHER]


def supervised_contrastive(vectors: torch.Tensor, groups: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon loss (Khosla et al. 2020): each item's neighbours in the batch should be its own group."""
    itself = torch.eye(len(vectors), dtype=torch.bool, device=vectors.device)
    logits = (vectors @ vectors.T / temperature).masked_fill(itself, float("-inf"))
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    positive = (groups[:, None] == groups[None, :]) & ~itself
    count = positive.sum(dim=1)
    per_item = log_prob.masked_fill(~positive, 0.0).sum(dim=1) / count.clamp(min=1)
    return -per_item[count > 0].sum() / (count > 0).sum().clamp(min=1)


def batch_loss(
    adapter: Adapter,
    inputs: tuple[torch.Tensor, torch.Tensor],
    groups: torch.Tensor,
    targets: torch.Tensor,
    anchors: tuple[torch.Tensor, torch.Tensor],
    anchored: torch.Tensor,
    config: TrainConfig,
) -> torch.Tensor:
    """One batch's loss: per member, SupCon over all labels, a cross-entropy per label, and for each view
    (`anchored`) finding its own catalog shot among the batch's `anchors` (vectors and colours, in order).

    The anchors ride in the batch's own forward pass: one larger matrix product per layer, not a second pass.
    """
    count = len(inputs[0])
    loss = torch.zeros((), device=groups.device)
    for outputs, logits in adapter.parts(torch.cat([inputs[0], anchors[0]]), torch.cat([inputs[1], anchors[1]])):
        embedded, anchor_vectors = outputs[:count], outputs[count:]
        loss = loss + supervised_contrastive(embedded, groups, config.temperature)
        for column, label_logits in enumerate(logits):
            loss = loss + F.cross_entropy(label_logits[:count], targets[:, column])
        if len(anchor_vectors):  # each view closest to its own product among the batch's catalog shots
            found = embedded[anchored] @ anchor_vectors.T / config.temperature
            own = torch.arange(len(found), device=groups.device)
            loss = loss + config.instance_weight * F.cross_entropy(found, own)
    return loss


def _open_source(source: Path, out: Path, progress: bool) -> IndexStore:
    """The index to train from: `source` itself, or one built (or resumed) from the catalog in OUT/base-index."""
    if not (source / MANIFEST).is_file():
        build_index(load_catalog(source), out / "base-index", load_encoder(), progress=progress)
        source = out / "base-index"
    store = IndexStore.open(source)
    if not store.manifest.get("complete"):
        raise TrainError(f"{source}: the index is incomplete; finish it with `fashionrec index` first")
    return store


def _read_all(store: IndexStore) -> tuple[list[StoredItem], np.ndarray, np.ndarray]:
    """Every item of the index with its vector and colour vector."""
    items: list[StoredItem] = []
    vector_chunks, colour_chunks = [], []
    for part, vectors, colours in store.load():
        items.extend(part)
        vector_chunks.append(vectors)
        colour_chunks.append(colours)
    if not items:
        return items, np.zeros((0, store.dim), np.float32), np.zeros((0, COLOUR_DIM), np.float32)
    return items, np.concatenate(vector_chunks), np.concatenate(colour_chunks)


def _view_vectors(
    store: IndexStore,
    items: list[StoredItem],
    vectors: np.ndarray,
    colours: np.ndarray,
    rows: np.ndarray,
    out: Path,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Base vectors and colours of one shopper-like view (views.py) of the items at `rows`, kept in OUT.

    The views are made in the local runner's worker processes and embedded in batches, as a build embeds
    catalog images. Other items, and those whose image cannot be read (gone from the catalog, added by
    upload), keep their own vectors.
    """
    path, ids = out / VIEWS, np.array([item.id for item in items])
    base = EncoderSpec.from_dict(store.manifest["encoder"])  # type: ignore[arg-type]
    if path.is_file():
        with np.load(path, allow_pickle=False) as kept:
            if str(kept["base"]) == base.id and np.array_equal(kept["ids"], ids) and np.array_equal(kept["rows"], rows):
                return kept["vectors"], kept["colours"]
    encoder = load_encoder(base.name, size=base.size, fit=base.fit)
    decoder = ViewDecoder(base.size, base.fit, Detail.from_dict(store.manifest.get("detail")))
    source = index_images(store.directory, store.manifest["catalog"])  # type: ignore[arg-type]
    if source is None:
        raise IndexStoreError(f"{store.directory}: the index does not record where its catalog images are")
    view_vectors, view_colours = vectors.copy(), colours.copy()
    row_of = {items[row].id: row for row in rows}
    work = [ToEmbed(Item(items[row].id, items[row].image, {}), "") for row in rows]
    work = [entry for entry in work if not entry.item.image.startswith(UPLOADED)]
    bar = tqdm(total=len(rows), unit="view", desc="Shopper-like views", disable=not progress, dynamic_ncols=True)
    bar.update(len(rows) - len(work))
    for batch in LocalRunner().run(work, source, encoder, decoder):
        done = [row_of[item.id] for item in batch.items]
        view_vectors[done], view_colours[done] = batch.vectors, batch.colours
        bar.update(batch.done)
    bar.close()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, base=base.id, ids=ids, rows=rows, vectors=view_vectors, colours=view_colours)
    os.replace(tmp, path)
    return view_vectors, view_colours


def view_recall(catalog: np.ndarray, views: np.ndarray, rows: np.ndarray) -> float:
    """Exact-product R@1 of shopper-like views: the share of `rows` whose view finds its own item first."""
    first = np.concatenate(
        [np.argmax(views[part] @ catalog.T, axis=1) for part in np.array_split(rows, len(rows) // 256 + 1)]
    )
    return round(float(np.mean(first == rows)), 4) if len(rows) else 0.0


def _snapshot(items: list[StoredItem], vectors: np.ndarray, colours: np.ndarray) -> Snapshot:
    """Items with vectors under evaluation, searched exactly in memory (nothing is written)."""
    store = FilesStore.in_memory(vectors.shape[1], SearchSettings(kind="exact", precision="float32"))
    store.upsert([item.id for item in items], vectors, colours, [item.metadata for item in items])
    return Snapshot.of(items, store)


def validate(snapshot: Snapshot, queries: np.ndarray, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Held-out queries searching every item (themselves excluded): P@5, macro P@5 and mAP@5 per label."""
    found = score(snapshot, nearest(snapshot, queries, EVAL_K, progress=False), labels, [EVAL_K])
    keys = (f"P@{EVAL_K}", f"macro_P@{EVAL_K}", f"mAP@{EVAL_K}")
    return {name: {key: figures[key] for key in keys} for name, figures in found.items()}  # type: ignore[index]


def project(adapter: Adapter, vectors: np.ndarray, colours: np.ndarray, device: torch.device) -> np.ndarray:
    """Stored vectors and colours -> what the trained encoder gives for the same images."""
    adapter.eval()
    with torch.inference_mode():
        starts = range(0, len(vectors), BATCH)
        return torch.cat(
            [
                adapter(
                    torch.from_numpy(vectors[i : i + BATCH]).to(device),
                    torch.from_numpy(colours[i : i + BATCH]).to(device),
                ).cpu()
                for i in starts
            ]
        ).numpy()


def validate_adapter(
    adapter: Adapter,
    items: list[StoredItem],
    vectors: np.ndarray,
    colours: np.ndarray,
    queries: np.ndarray,
    labels: Sequence[str],
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """`validate` on the stored vectors as the adapter projects them: the figures of the trained encoder."""
    return validate(_snapshot(items, project(adapter, vectors, colours, device), colours), queries, labels)


def _save_atomic(state: dict, path: Path) -> None:
    """torch.save to a temp file, then rename: a kill at any moment leaves the previous file whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _seconds_left(history: list[dict], epochs: int, validate_every: int, first_validation: float) -> float:
    """Time left after the last epoch of `history`: its remaining epochs and validations at the recent pace
    (before the first validated epoch, a validation is guessed to take as long as the zero-shot one)."""
    done = history[-1]["epoch"]
    epoch_seconds = np.mean([r["seconds"] - r.get("validate_seconds", 0.0) for r in history[-3:]])
    validations = [first_validation] + [r["validate_seconds"] for r in history if r.get("validate_seconds")]
    left_validations = sum(e % validate_every == 0 or e == epochs for e in range(done + 1, epochs + 1))
    return (epochs - done) * float(epoch_seconds) + left_validations * validations[-1]


def _summary(figures: dict[str, dict[str, float]]) -> str:
    return "  ".join(f"{name} P@5 {f['P@5']:.3f} (macro {f['macro_P@5'] or 0:.3f})" for name, f in figures.items())


def train(
    source: str | Path,
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    name: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    threads: int = 0,
    validate_every: int = VALIDATE_EVERY,
    precision: Precision = "auto",
) -> dict[str, object]:
    """Train an adapter on `source` (an index, or a catalog indexed first) into model directory `out`.

    Returns the model manifest. Resumes after the last checkpointed epoch of an earlier run. `threads`:
    torch's CPU threads while training (0: chosen from the idle cores, see training_threads).
    `validate_every`: epochs between held-out validations (the last epoch is always validated); they
    only report, so it changes no weight. `precision` of the training steps' matrix products: "auto" is bf16
    where the CPU computes it natively (3.1x faster steps there, the same held-out figures; docs/performance.md),
    else f32; the weights, the validation and the exported model stay f32.
    """
    if validate_every < 1:
        raise TrainError("--validate-every must be at least 1")
    previous = torch.get_num_threads()
    torch.set_num_threads(training_threads(threads))
    try:
        bf16 = precision == "bf16" or (precision == "auto" and not torch.cuda.is_available() and cpu_has_bf16())
        where = (Path(source).expanduser(), Path(out).expanduser())
        return _train(*where, config, name, progress, log, validate_every, bf16)
    finally:
        torch.set_num_threads(previous)  # the caller's own torch work keeps its setting


def training_threads(requested: int = 0) -> int:
    """torch's threads for training: `requested`, else one per idle core (at least one).

    On a busy machine more threads than idle cores wait on each other: on 2 cores shared with other
    work, a batch took 3-7 s with torch's default (every core), about a third of that with one thread.
    On quiet cores every thread pays: 0.89 s a batch on 2 threads against 1.29 s on 1 (44k, make run's recipe).
    """
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, math.floor(idle_cores(cores) + 0.5)))


def idle_cores(cores: int) -> float:
    """Cores idle now: /proc/stat's idle time over IDLE_SAMPLE_S where there is one (Linux), else the load average.

    The load average lags by a minute: right after `make run`'s indexing it read about 1.3 on cores gone quiet,
    and training then took one thread.
    """
    before = _cpu_times()
    if before is None:
        return cores - os.getloadavg()[0] if hasattr(os, "getloadavg") else cores
    time.sleep(IDLE_SAMPLE_S)
    after = _cpu_times()
    if after is None or after[0] <= before[0]:
        return float(cores)
    return cores * (after[1] - before[1]) / (after[0] - before[0])


def _cpu_times() -> tuple[int, int] | None:
    """All CPUs' (total, idle) time in ticks since boot, from /proc/stat's first line; None without it."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields[:8]), fields[3] + fields[4]  # user..steal; idle + iowait


def _train(
    source: Path,
    out: Path,
    config: TrainConfig,
    name: str | None,
    progress: bool,
    log: Callable[[str], None],
    validate_every: int,
    bf16: bool,
) -> dict[str, object]:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    log(f"Training with {torch.get_num_threads()} torch thread(s), {'bf16' if bf16 else 'f32'} matrix products")
    store = _open_source(source, out, progress)
    base = EncoderSpec.from_dict(store.manifest["encoder"])  # type: ignore[arg-type]
    if base.name not in BACKBONES:
        raise TrainError(f"{store.directory} was built with {base.id}; train from an index of a base encoder")
    items, vectors, colours = _read_all(store)
    if len(items) < MIN_ITEMS:
        raise TrainError(f"too few items to train: {len(items)} in {store.directory}, at least {MIN_ITEMS} needed")
    if not 0 < config.holdout < 1 or config.epochs < 1:
        raise TrainError("--holdout must be between 0 and 1 and --epochs at least 1")
    if not 0 <= config.base_weight <= 1 or not 0 <= config.base_components <= base.dim:
        raise TrainError(f"--base-weight must be between 0 and 1 and --base-components between 0 and {base.dim}")
    snapshot = _snapshot(items, vectors, colours)
    values = label_values(snapshot, config.labels)  # ValueError naming the columns if one is unknown
    ids = [item.id for item in items]
    heldout = heldout_mask(ids, config.holdout, config.seed)
    train_rows, heldout_rows = np.flatnonzero(~heldout), np.flatnonzero(heldout)
    targets, classes = zip(*(class_targets(values[label], ~heldout) for label in config.labels), strict=True)
    target = np.stack(targets, axis=1)
    groups = np.unique(target, axis=0, return_inverse=True)[1].reshape(-1)

    view_rows = heldout_rows[:: max(1, len(heldout_rows) // VIEW_QUERIES)][:VIEW_QUERIES]
    if config.view_share > 0:
        rows = np.union1d(train_rows, view_rows)
        view_vectors, view_colours = _view_vectors(store, items, vectors, colours, rows, out, progress)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    class_counts = [len(c) for c in classes]
    weights = {"label_weight": config.label_weight, "base_weight": config.base_weight}
    settings = {key: getattr(config, key) for key in ADAPTER_SETTINGS}
    adapter = Adapter(base.dim, class_counts, **settings).to(device)
    # fused: one kernel for the whole update, 5% of a step faster on CPU than the per-tensor default
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=config.lr, weight_decay=1e-4, fused=True)
    checkpoint_path = out / CHECKPOINT
    state: dict = {"epoch": 0, "history": [], "seconds": 0.0}
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if (state["settings"], state["base"], state["classes"]) != (config.settings(), base.id, list(classes)):
            raise TrainError(
                f"{out} holds a training with other settings, labels or catalog; use another --out or the same ones"
            )
        adapter.load_state_dict(state["adapter"])
        adapter.label_weight.fill_(config.label_weight)  # the mixing weights may differ from the last run's
        adapter.base_weight.fill_(config.base_weight)
        optimizer.load_state_dict(state["optimizer"])
        log(f"Resuming after epoch {state['epoch']} of {config.epochs} (checkpoint {checkpoint_path})")
    else:
        adapter.fit_base_basis(torch.from_numpy(vectors[train_rows]).to(device))  # a resume loads it instead
        write_bytes_atomic(out / HELDOUT, "".join(f"{ids[row]}\n" for row in heldout_rows).encode())
        log(f"Zero-shot ({base.id}) on {len(heldout_rows)} held-out items searching all {len(items)}:")
        zero_shot_started = time.perf_counter()
        state["zero_shot"] = validate(snapshot, heldout_rows, config.labels)
        state["zero_shot_seconds"] = time.perf_counter() - zero_shot_started
        if config.view_share > 0:
            state["zero_shot_view_R@1"] = view_recall(vectors, view_vectors, view_rows)
        log("  " + _summary(state["zero_shot"]))

    if state["epoch"] < config.epochs:
        (out / TRAINED_MANIFEST).unlink(missing_ok=True)  # the old model's files are about to change
        x = torch.from_numpy(vectors[train_rows]).to(device)
        c = torch.from_numpy(colours[train_rows]).to(device)
        if config.view_share > 0:
            xv = torch.from_numpy(view_vectors[train_rows]).to(device)
            cv = torch.from_numpy(view_colours[train_rows]).to(device)
        y = torch.from_numpy(target[train_rows]).to(device)
        g = torch.from_numpy(groups[train_rows]).to(device)
        starts = range(0, max(len(train_rows) - config.batch_size, 0) + 1, config.batch_size)  # full batches only
        bar = tqdm(
            total=config.epochs * len(starts),
            initial=state["epoch"] * len(starts),
            unit="batch",
            desc="Training",
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            for epoch in range(state["epoch"], config.epochs):
                epoch_started = time.perf_counter()
                for group in optimizer.param_groups:  # cosine schedule, a function of the epoch: resumes exactly
                    group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
                torch.manual_seed(config.seed * 100_003 + epoch)  # shuffling and dropout: the same after a resume
                order = torch.randperm(len(train_rows)).to(device)
                adapter.train()
                losses = []
                for start in starts:
                    batch = order[start : start + config.batch_size]
                    inputs, inputs_colour = x[batch], c[batch]
                    anchored = torch.zeros(len(batch), dtype=torch.bool, device=device)
                    if config.view_share > 0:  # some items seen as a shopper would photograph them
                        swap = (torch.rand(len(batch), device=device) < config.view_share)[:, None]
                        inputs = torch.where(swap, xv[batch], inputs)
                        inputs_colour = torch.where(swap, cv[batch], inputs_colour)
                        if config.instance_weight > 0:  # ... and their catalog shots, for the view to find
                            anchored = swap[:, 0]
                    anchors = (x[batch[anchored]], c[batch[anchored]])
                    batch_inputs = (inputs, inputs_colour)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        loss = batch_loss(adapter, batch_inputs, g[batch], y[batch], anchors, anchored, config)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                    bar.update()
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
                validation_started = time.perf_counter()
                figures = {}
                if (epoch + 1) % validate_every == 0 or epoch + 1 == config.epochs:
                    figures = validate_adapter(adapter, items, vectors, colours, heldout_rows, config.labels, device)
                seconds = time.perf_counter() - epoch_started
                record = {
                    "epoch": epoch + 1,
                    "loss": float(np.mean(losses)),
                    "seconds": seconds,
                    "validate_seconds": time.perf_counter() - validation_started if figures else 0.0,
                    **weights,
                    **figures,
                }
                state["history"].append(record)
                state |= {
                    "epoch": epoch + 1,
                    "seconds": state["seconds"] + seconds,
                    "settings": config.settings(),
                    "base": base.id,
                    "classes": list(classes),
                    "adapter": adapter.state_dict(),
                    "optimizer": optimizer.state_dict(),
                }
                _save_atomic(state, checkpoint_path)
                with tqdm.external_write_mode():
                    left = _seconds_left(
                        state["history"], config.epochs, validate_every, state.get("zero_shot_seconds", 0.0)
                    )
                    log(
                        f"epoch {epoch + 1}/{config.epochs} ({seconds:.0f} s, ~{left / 60:.1f} min left)  "
                        f"loss {np.mean(losses):.3f}  {_summary(figures) if figures else '(validated later)'}"
                    )
        except KeyboardInterrupt:
            raise TrainInterrupted(
                f"interrupted: {state['epoch']} of {config.epochs} epochs are checkpointed in {out}; "
                "run the same command to resume"
            ) from None
        finally:
            bar.close()
    last = state["history"][-1]
    if all(last.get(key) == value for key, value in weights.items()) and state["zero_shot"].keys() <= last.keys():
        trained = {label: last[label] for label in state["zero_shot"]}
    else:  # other mixing weights than the last epoch's (or its epoch was not validated): measure the model
        log(f"Re-exporting with label weight {config.label_weight} and base weight {config.base_weight}")
        trained = validate_adapter(adapter, items, vectors, colours, heldout_rows, config.labels, device)
    if config.view_share > 0:
        projected = project(adapter, vectors, colours, device)
        state["views"] = {
            "exact_R@1_zero_shot": state["zero_shot_view_R@1"],
            "exact_R@1": view_recall(projected, project(adapter, view_vectors, view_colours, device), view_rows),
            "queries": len(view_rows),
        }
        log(
            f"Shopper-like views of held-out items, exact-product R@1: {state['zero_shot_view_R@1']:.3f} "
            f"zero-shot, {state['views']['exact_R@1']:.3f} trained"
        )
    manifest = _save_model(out, name or out.resolve().name, base, adapter.cpu(), config, state, trained, ids, heldout)
    manifest["wall_seconds"] = time.perf_counter() - started
    return manifest


def _save_model(
    out: Path,
    name: str,
    base: EncoderSpec,
    adapter: Adapter,
    config: TrainConfig,
    state: dict,
    trained: dict[str, dict[str, float]],
    ids: list[str],
    heldout: np.ndarray,
) -> dict[str, object]:
    """Write the adapter, the ONNX graph (backbone + adapter), then the manifest: last, so a model dir is whole."""
    _save_atomic(adapter.state_dict(), out / ADAPTER)
    adapter_sha256 = file_sha256(out / ADAPTER)
    class_counts = [len(classes) for classes in state["classes"]]
    out_dim = config.members * config.dim + sum(class_counts) + config.base_components
    spec = trained_spec(name, base, adapter_sha256, out_dim, out)
    net = TrainedNet(embedding_net(BACKBONES[base.name]()), adapter.eval())  # type: ignore[arg-type]
    export_onnx(net.eval(), out / ONNX, base.size, colour_inputs)
    manifest: dict[str, object] = {
        "format_version": MODEL_FORMAT,
        "name": name,
        "encoder": spec.to_dict(),
        "base_encoder": base.to_dict(),
        "adapter": {
            "inputs": ["vector", "colour"],
            "base_dim": base.dim,
            "colour_dim": COLOUR_DIM,
            "in_dim": base.dim + COLOUR_DIM,
            "class_counts": class_counts,
            **{key: getattr(config, key) for key in ADAPTER_SETTINGS},
            "out_dim": out_dim,
        },
        "adapter_sha256": adapter_sha256,
        "labels": list(config.labels),
        "classes": dict(zip(config.labels, state["classes"], strict=True)),
        "split": {
            "by": "blake2b(f'{seed}:{id}') < holdout",
            "seed": config.seed,
            "holdout": config.holdout,
            "train_items": int((~heldout).sum()),
            "heldout_items": int(heldout.sum()),
            "heldout_ids": HELDOUT,
        },
        "config": config.settings() | {"epochs": config.epochs},
        "evaluation": f"held-out items query all {len(ids)} items (themselves excluded); macro over classes >= 20",
        "zero_shot": state["zero_shot"],
        "trained": trained,
        "views": state.get("views"),  # exact-product R@1 of held-out items' shopper-like views
        "history": state["history"],
        "training_seconds": state["seconds"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(out / TRAINED_MANIFEST, manifest)
    return manifest
