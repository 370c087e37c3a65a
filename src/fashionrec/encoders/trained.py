"""A model directory made by `fashionrec train`: the base encoder and a trained adapter, as one encoder.

    MODEL_DIR/fashionrec-model.json   manifest: encoder spec, base encoder, labels, split, metrics per epoch
    MODEL_DIR/adapter.pt              the adapter's torch state dict (read with weights_only=True)
    MODEL_DIR/model.onnx              backbone + adapter in one graph: uint8 pixels and their colour
                                      vectors in, trained vectors out (see adapter.Adapter)
    MODEL_DIR/heldout_ids.txt         the items whose labels training never saw
    MODEL_DIR/checkpoint.pt           the last epoch's training state, to resume or to train longer

This module is the inference side and imports no torch (the nets are in adapter.py, imported only
to export or for the torch backend; training is fashionrec.quality.train). With the onnx backend,
loading needs no torch: the encoder id is recomputed from the files' hashes and must equal the one
recorded at training time, so a changed file is refused, never used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from fashionrec.catalog import Catalog
from fashionrec.colour import COLOUR_DIM, colour_vector
from fashionrec.encoders.int8 import int8_encoder
from fashionrec.encoders.registry import BACKBONES
from fashionrec.encoders.runtimes import Encoder, onnx_runner, torch_runner
from fashionrec.encoders.spec import TRAINED_MANIFEST, EncoderError, EncoderSpec
from fashionrec.encoders.weights import file_sha256
from fashionrec.images import Fit

ADAPTER = "adapter.pt"
ONNX = "model.onnx"
HELDOUT = "heldout_ids.txt"
CHECKPOINT = "checkpoint.pt"
VIEWS = "views.npz"  # base vectors of shopper-like views of every item, made once (numpy, no pickle)
MODEL_FORMAT = 3  # 3: members, class probabilities and the reduced base vector; 2: no base vector; 1: one adapter


def colour_inputs(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The trained graph's inputs: the square uint8 pixels and each image's colour vector, as the index stores it."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    return {"pixels": pixels, "colour": np.stack([colour_vector(image) for image in pixels])}


def trained_spec(name: str, base: EncoderSpec, adapter_sha256: str, dim: int, directory: Path) -> EncoderSpec:
    """The trained encoder's spec: its hash covers the base weights and the adapter, so either change shows."""
    weights = hashlib.sha256(f"{base.weights_sha256}:{adapter_sha256}".encode()).hexdigest()
    return EncoderSpec(f"trained:{name}", weights, base.size, base.fit, dim, str(directory.resolve()))


def read_manifest(directory: Path) -> dict:
    try:
        return json.loads((directory / TRAINED_MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise EncoderError(f"{directory}: unreadable model manifest ({error})") from None


def load_trained_encoder(
    directory: Path,
    *,
    size: int | None,
    fit: Fit,
    backend: str,
    threads: int = 0,
    int8: bool = False,
    calibration: Catalog | None = None,
) -> Encoder:
    """The encoder of a model directory (quantised with `int8`); refused if its files or the base weights changed."""
    manifest = read_manifest(directory)
    base = EncoderSpec.from_dict(manifest["base_encoder"])
    if (size or base.size, fit) != (base.size, base.fit):
        raise EncoderError(f"{directory} takes {base.fit}{base.size} images, not {fit}{size}: leave --size/--fit out")
    if base.name not in BACKBONES:
        raise EncoderError(f"{directory} builds on encoder {base.name!r}, which this fashionrec does not have")
    if manifest.get("format_version") != MODEL_FORMAT or manifest["adapter"].get("colour_dim") != COLOUR_DIM:
        raise EncoderError(
            f"{directory}: made by an older fashionrec (model format {manifest.get('format_version')}); train it again"
        )
    backbone = BACKBONES[base.name]()
    base = EncoderSpec(base.name, file_sha256(backbone.weights_path), base.size, base.fit, base.dim)
    adapter_path = directory / ADAPTER
    if not adapter_path.is_file():
        raise EncoderError(f"{directory}: no {ADAPTER}; the training did not finish (rerun `fashionrec train`)")
    spec = trained_spec(manifest["name"], base, file_sha256(adapter_path), manifest["adapter"]["out_dim"], directory)
    if spec.id != manifest["encoder"]["id"]:
        raise EncoderError(f"{directory}: the model is {manifest['encoder']['id']} but its files give {spec.id}")

    def make_net() -> object:
        from fashionrec.encoders.adapter import trained_net  # torch: only to export or for the torch backend

        return trained_net(backbone, manifest["adapter"], adapter_path)

    if int8:
        return int8_encoder(spec, directory / ONNX, make_net, colour_inputs, threads, calibration)
    if backend == "torch":
        return Encoder(spec, torch_runner(make_net(), colour_inputs), "torch")
    return Encoder(spec, onnx_runner(make_net, directory / ONNX, spec.size, threads, colour_inputs), "onnx")
