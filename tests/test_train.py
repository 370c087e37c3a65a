"""`fashionrec train`: a real (tiny) training on the sample index, its model directory as an encoder, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from fashionrec.build import build_index
from fashionrec.catalog import load_catalog
from fashionrec.colour import COLOUR_DIM
from fashionrec.encoders import TRAINED_MANIFEST, Encoder, EncoderError, load_encoder
from fashionrec.encoders.adapter import Adapter, load_adapter
from fashionrec.encoders.runtimes import cpu_has_bf16
from fashionrec.encoders.trained import ADAPTER, CHECKPOINT, HELDOUT, ONNX, VIEWS
from fashionrec.images import open_image
from fashionrec.index import IndexStore
from fashionrec.quality.config import TrainConfig
from fashionrec.quality.train import heldout_mask, train, training_threads
from fashionrec.search import Recommender

from conftest import run_cli, sample_rows, write_catalog

# Slow as a whole: every test trains a model, or reuses the module's trained one (about 13 s to train).
pytestmark = pytest.mark.slow

SMALL = TrainConfig(epochs=2, batch_size=64, hidden=64, dim=32, members=2, base_components=16, view_share=0.5)
SMALL_OPTIONS = ["--batch-size", "64", "--hidden", "64", "--dim", "32", "--members", "2", "--base-components", "16"]
SMALL_OPTIONS += ["--view-share", "0.5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, built_index: tuple[Path, object]) -> tuple[Path, dict]:
    """A model trained for two epochs on the sample index, with every training batch recorded."""
    batches: list[torch.Tensor] = []
    parts = Adapter.parts

    def recording(self: Adapter, vectors: torch.Tensor, colours: torch.Tensor) -> list:
        if self.training:
            batches.append(torch.cat([vectors, colours], dim=1).detach().clone())
        return parts(self, vectors, colours)

    Adapter.parts = recording  # type: ignore[method-assign]
    try:
        out = tmp_path_factory.mktemp("model") / "sample-model"
        manifest = train(built_index[0], out, SMALL, progress=False, log=lambda _: None)
    finally:
        Adapter.parts = parts  # type: ignore[method-assign]
    return out, manifest | {"batches": torch.cat(batches).numpy()}


def stored(index: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Ids, vectors, colour vectors and image names of an index."""
    store = IndexStore.open(index)
    ids, vectors, colours, images = [], [], [], []
    for items, part, colour_part in store.load():
        ids += [item.id for item in items]
        images += [item.image for item in items]
        vectors.append(part)
        colours.append(colour_part)
    store.close()
    return ids, np.concatenate(vectors), np.concatenate(colours), images


def test_split_by_id_is_deterministic_and_never_trained_on(
    trained: tuple[Path, dict], built_index: tuple[Path, object]
) -> None:
    out, manifest = trained
    ids, vectors, colours, _ = stored(built_index[0])
    inputs = np.concatenate([vectors, colours], axis=1)  # what the adapter sees of each item
    heldout = heldout_mask(ids, 0.2, 0)
    assert np.array_equal(heldout, heldout_mask(ids, 0.2, 0))
    assert not np.array_equal(heldout, heldout_mask(ids, 0.2, 1))
    reordered = list(reversed(ids))
    assert {i for i, h in zip(reordered, heldout_mask(reordered, 0.2, 0), strict=True) if h} == set(
        np.array(ids)[heldout]
    )
    assert 0.1 < heldout.mean() < 0.3
    assert (out / HELDOUT).read_text().split() == list(np.array(ids)[heldout])
    assert manifest["split"]["heldout_items"] == heldout.sum()
    with np.load(out / VIEWS, allow_pickle=False) as kept:  # shopper-like views, some of them held-out items'
        views = np.concatenate([kept["vectors"], kept["colours"]], axis=1)
        assert set(kept["rows"]) >= set(np.flatnonzero(~heldout)) and not np.array_equal(views, inputs)
    seen = {row.tobytes() for row in manifest["batches"]}
    training = {row.tobytes() for row in inputs[~heldout]}
    training_views = {row.tobytes() for row in views[~heldout]}
    assert seen <= training | training_views  # training items only, as they are or as a shopper's photo
    assert len(seen & training) > 0.3 * len(training) and len(seen & training_views) > 0.3 * len(training)
    assert not seen & {row.tobytes() for row in np.concatenate([inputs[heldout], views[heldout]])}
    assert 0 <= manifest["views"]["exact_R@1"] <= 1 and manifest["views"]["queries"] > 0
    assert len(manifest["history"]) == 2 and manifest["trained"]["articleType"]["P@5"] > 0


def test_saved_model_reloads_with_the_same_vectors(trained: tuple[Path, dict], catalog_photo: Path) -> None:
    out, manifest = trained
    images = [open_image(p, min_side=160) for p in sorted(catalog_photo.parent.glob("*.jpg"))[:4]]
    onnx, again, reference = (load_encoder(str(out), backend=b) for b in ("onnx", "onnx", "torch"))
    assert onnx.id == reference.id == manifest["encoder"]["id"]
    class_counts = [len(manifest["classes"][label]) for label in ("articleType", "baseColour")]
    out_dim = 2 * 32 + sum(class_counts) + 16
    assert onnx.id.startswith("trained:sample-model@") and onnx.id.endswith("/pad160") and onnx.dim == out_dim
    assert manifest["adapter"] == {
        "inputs": ["vector", "colour"],
        "base_dim": 1280,
        "colour_dim": COLOUR_DIM,
        "in_dim": 1280 + COLOUR_DIM,
        "class_counts": class_counts,
        "hidden": 64,
        "dim": 32,
        "members": 2,
        "label_weight": 1.0,
        "base_weight": 0.4,
        "base_components": 16,
        "out_dim": out_dim,
    }
    graph = onnxruntime.InferenceSession(str(out / ONNX), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape[1:]) for i in graph.get_inputs()] == [
        ("pixels", "tensor(uint8)", [160, 160, 3]),
        ("colour", "tensor(float)", [COLOUR_DIM]),
    ]
    vectors = onnx.embed(images)
    assert np.array_equal(vectors, again.embed(images))
    assert np.abs(vectors - reference.embed(images)).max() < 1e-4
    # two members' unit vectors, each scaled by 1/sqrt(2), then two labels' class probabilities, all of it
    # scaled by sqrt(1 - 0.4) / sqrt(1 + 2); then the base vector's 16 main components, unit length, x sqrt(0.4)
    scale = np.sqrt(0.6 / 3)
    members = vectors[:, :64].reshape(len(vectors), 2, 32)
    assert np.allclose(np.linalg.norm(members, axis=2), scale / np.sqrt(2), atol=1e-5)
    *probabilities, base = np.split(vectors[:, 64:], np.cumsum(class_counts), axis=1)
    for part in probabilities:
        assert (part >= 0).all() and np.allclose(part.sum(axis=1), scale, atol=1e-5)
    assert base.shape[1] == 16 and np.allclose(np.linalg.norm(base, axis=1), np.sqrt(0.4), atol=1e-5)
    assert (np.linalg.norm(vectors, axis=1) <= 1 + 1e-5).all()


def test_graph_equals_adapter_on_stored_vectors(
    trained: tuple[Path, dict], built_index: tuple[Path, object], sample_catalog: Path
) -> None:
    """Projecting stored vectors and colours gives exactly what an index of the trained encoder holds."""
    _, vectors, colours, images = stored(built_index[0])
    out, manifest = trained
    adapter = load_adapter(manifest["adapter"], out / ADAPTER)
    with torch.inference_mode():
        projected = adapter(torch.from_numpy(vectors[:5]), torch.from_numpy(colours[:5])).numpy()
    embedded = load_encoder(str(out)).embed([open_image(sample_catalog / name, min_side=160) for name in images[:5]])
    assert np.abs(projected - embedded).max() < 1e-4


def test_index_with_the_trained_encoder(
    trained: tuple[Path, dict], sample_catalog: Path, tmp_path: Path, catalog_photo: Path
) -> None:
    out, manifest = trained
    index = tmp_path / "idx"
    built = run_cli("index", str(sample_catalog), "--out", str(index), "--encoder", str(out), "--workers", "0")
    assert built.returncode == 0, built.stderr
    recorded = json.loads((index / "manifest.json").read_text())["encoder"]
    assert recorded["id"] == manifest["encoder"]["id"] and recorded["dim"] == manifest["adapter"]["out_dim"]
    recommender = Recommender.open(index)
    assert recommender.similar_to_image(catalog_photo, k=1)[0].id == catalog_photo.stem
    refused = run_cli("index", str(sample_catalog), "--out", str(index))
    assert refused.returncode == 2 and "was built with encoder trained:sample-model@" in refused.stderr
    moved = out.rename(tmp_path / "moved-model")
    try:
        with pytest.raises(EncoderError, match="whose model directory .* is gone"):
            Recommender.open(index).embed_image(catalog_photo)
    finally:
        moved.rename(out)


def test_rerun_with_other_weights_re_exports_without_training(
    trained: tuple[Path, dict], built_index: tuple[Path, object], tmp_path: Path, catalog_photo: Path
) -> None:
    out, manifest = trained
    again = tmp_path / "sample-model"
    shutil.copytree(out, again)
    weights = ["--label-weight", "0", "--base-weight", "0"]
    rerun = run_cli("train", str(built_index[0]), "--out", str(again), "--epochs", "2", *SMALL_OPTIONS, *weights)
    assert rerun.returncode == 0, rerun.stderr
    assert (
        "Resuming after epoch 2" in rerun.stdout
        and "Re-exporting with label weight 0.0 and base weight 0.0" in rerun.stdout
    )
    assert torch.load(again / CHECKPOINT, weights_only=True)["epoch"] == 2  # nothing trained again
    remade = json.loads((again / TRAINED_MANIFEST).read_text())
    assert remade["history"] == json.loads(json.dumps(manifest["history"]))
    assert (remade["adapter"]["label_weight"], remade["adapter"]["base_weight"]) == (0.0, 0.0)
    assert remade["encoder"]["id"] != manifest["encoder"]["id"]  # the weights are in the adapter's hash
    assert remade["trained"] != manifest["trained"]  # measured again, on the model as saved
    vector = load_encoder(str(again)).embed([open_image(catalog_photo, min_side=160)])[0]
    members, probabilities, base = np.split(vector, [64, remade["adapter"]["out_dim"] - 16])
    assert np.isclose(np.linalg.norm(members), 1, atol=1e-5) and not probabilities.any() and not base.any()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL])
def test_stopped_training_resumes_after_the_last_epoch(
    stop: signal.Signals, built_index: tuple[Path, object], tmp_path: Path
) -> None:
    out = tmp_path / "model"
    command = [sys.executable, "-m", "fashionrec.cli", "train", str(built_index[0]), "--out", str(out)]
    process = subprocess.Popen([*command, "--epochs", "100000", *SMALL_OPTIONS], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # a busy machine embeds the 300 views slowly before the first epoch
    while not (out / CHECKPOINT).is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    if stop == signal.SIGINT:
        assert process.returncode == 130 and "run the same command to resume" in stderr
        assert not list(out.glob(".*.tmp"))
    assert not (out / TRAINED_MANIFEST).exists()
    done = torch.load(out / CHECKPOINT, weights_only=True)
    assert 1 <= done["epoch"] < 100000
    resumed = run_cli(
        "train",
        str(built_index[0]),
        "--out",
        str(out),
        "--epochs",
        str(done["epoch"] + 1),
        *SMALL_OPTIONS,
        "--threads",
        "1",
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "Training with 1 torch thread(s)" in resumed.stdout and "min left)" in resumed.stdout
    assert f"Resuming after epoch {done['epoch']}" in resumed.stdout and "Zero-shot" not in resumed.stdout
    history = json.loads((out / TRAINED_MANIFEST).read_text())["history"]
    assert history[: done["epoch"]] == json.loads(json.dumps(done["history"]))
    assert len(history) == done["epoch"] + 1


def test_training_threads_are_chosen_and_given_back(built_index: tuple[Path, object], tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    assert training_threads(3) == 3 and 1 <= training_threads() <= cores
    before = torch.get_num_threads()
    lines: list[tuple[str, int]] = []
    tiny = dataclasses.replace(SMALL, epochs=1, view_share=0.0)
    log = lambda line: lines.append((line, torch.get_num_threads()))  # noqa: E731
    train(built_index[0], tmp_path / "model", tiny, progress=False, log=log, threads=before + 1)
    assert lines[0][0].startswith(f"Training with {before + 1} torch thread(s), ") and lines[0][1] == before + 1
    assert all(threads == before + 1 for _, threads in lines)  # for the whole training ...
    assert torch.get_num_threads() == before  # ... then given back


def test_bf16_steps_learn_as_f32_steps_do(built_index: tuple[Path, object], tmp_path: Path) -> None:
    """`precision` picks the training steps' matrix products ("auto": bf16 where the CPU computes it natively):
    the arithmetic differs, what is learnt does not, and the saved model is f32 either way."""
    tiny = dataclasses.replace(SMALL, epochs=3, view_share=0.0)
    runs = {}
    for precision in ("f32", "bf16", "auto"):
        lines: list[str] = []
        runs[precision] = train(
            built_index[0], tmp_path / precision, tiny, progress=False, log=lines.append, precision=precision
        )
        used = precision if precision != "auto" else ("bf16" if cpu_has_bf16() else "f32")
        assert lines[0].endswith(f", {used} matrix products")
    f32, bf16 = runs["f32"]["history"], runs["bf16"]["history"]
    assert [record["loss"] for record in f32] != [record["loss"] for record in bf16]  # other arithmetic
    assert abs(f32[-1]["loss"] - bf16[-1]["loss"]) < 0.05 * f32[-1]["loss"]
    for label, figures in runs["f32"]["trained"].items():
        assert abs(figures["P@5"] - runs["bf16"]["trained"][label]["P@5"]) < 0.05
    weights = torch.load(tmp_path / "bf16" / ADAPTER, weights_only=True)
    assert all(tensor.dtype == torch.float32 for tensor in weights.values() if tensor.is_floating_point())


def test_validation_every_few_epochs_and_after_the_last(built_index: tuple[Path, object], tmp_path: Path) -> None:
    lines: list[str] = []
    tiny = dataclasses.replace(SMALL, epochs=3, view_share=0.0)
    manifest = train(built_index[0], tmp_path / "model", tiny, progress=False, log=lines.append, validate_every=2)
    history = manifest["history"]
    assert [("articleType" in record, record["validate_seconds"] > 0) for record in history] == [
        (False, False),
        (True, True),
        (True, True),
    ]
    assert manifest["trained"] == {label: history[-1][label] for label in manifest["zero_shot"]}  # the last epoch's
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert "(validated later)" in epochs[0] and "articleType P@5" in epochs[1] and "min left)" in epochs[2]
    with pytest.raises(ValueError, match="--validate-every must be at least 1"):
        train(built_index[0], tmp_path / "other", tiny, progress=False, log=lines.append, validate_every=0)


def test_bad_inputs_give_one_line_errors(built_index: tuple[Path, object], tmp_path: Path, encoder: Encoder) -> None:
    unknown = run_cli("train", str(built_index[0]), "--out", str(tmp_path / "m1"), "--label", "nosuch")
    assert unknown.returncode == 2 and "unknown label column(s) nosuch" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    header, rows = sample_rows(20, seed=3)
    tiny = tmp_path / "tiny-index"
    build_index(load_catalog(write_catalog(tmp_path / "tiny", header, rows)), tiny, encoder, workers=0, progress=False)
    few = run_cli("train", str(tiny), "--out", str(tmp_path / "m2"))
    assert few.returncode == 2 and "too few items to train: 20" in few.stderr
    assert len(few.stderr.strip().splitlines()) == 1
    assert run_cli("train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m3")).returncode == 2
    wide = run_cli("train", str(built_index[0]), "--out", str(tmp_path / "m4"), "--base-components", "2000")
    assert wide.returncode == 2 and "--base-components between 0 and 1280" in wide.stderr


@pytest.mark.parametrize(
    "older",
    [
        {"format_version": 1},  # one adapter, no class probabilities
        {"format_version": 2},  # no base vector
        {"adapter": {"in_dim": 1280, "hidden": 64, "dim": 32}},  # before the colour input
    ],
)
def test_model_of_an_older_fashionrec_is_refused(trained: tuple[Path, dict], tmp_path: Path, older: dict) -> None:
    out, _ = trained
    old = tmp_path / "old-model"
    shutil.copytree(out, old)
    manifest = json.loads((old / TRAINED_MANIFEST).read_text())
    (old / TRAINED_MANIFEST).write_text(json.dumps(manifest | older))
    with pytest.raises(EncoderError, match="older fashionrec .* train it again"):
        load_encoder(str(old))
