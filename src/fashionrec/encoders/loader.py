"""Open an encoder by name or model directory, or the one an index was built with (checked against it)."""

from __future__ import annotations

from pathlib import Path

from fashionrec.catalog import Catalog
from fashionrec.encoders.int8 import INT8, int8_encoder, split_int8
from fashionrec.encoders.registry import BACKBONES
from fashionrec.encoders.runtimes import Encoder, onnx_runner, pixel_inputs, torch_runner
from fashionrec.encoders.spec import DEFAULT_ENCODER, DEFAULT_FIT, TRAINED_MANIFEST, EncoderError, EncoderSpec
from fashionrec.encoders.trained import load_trained_encoder
from fashionrec.encoders.weights import WEIGHTS_ENV, cache_dir, file_sha256
from fashionrec.images import Fit


def load_encoder(
    name: str = DEFAULT_ENCODER,
    *,
    size: int | None = None,
    fit: Fit = DEFAULT_FIT,
    backend: str = "onnx",
    threads: int = 0,
    calibration: Catalog | None = None,
) -> Encoder:
    """Build an encoder by name or trained model directory; `size` defaults to the encoder's own.

    `backend` is "onnx" (fast) or "torch" (the reference). `threads` is how many cores one ONNX call
    uses (0: all): a server answering requests side by side does best with 1 each. A name ending in
    ":int8" is the quantised encoder (int8.py), made from `calibration`'s photos the first time.
    """
    if backend not in ("onnx", "torch"):
        raise EncoderError(f"unknown backend {backend!r}; choose onnx or torch")
    name, int8 = split_int8(name)
    if int8 and backend != "onnx":
        raise EncoderError(f"{name}{INT8}: int8 encoders run on the onnx backend only")
    if (Path(name) / TRAINED_MANIFEST).is_file():
        return load_trained_encoder(
            Path(name), size=size, fit=fit, backend=backend, threads=threads, int8=int8, calibration=calibration
        )
    if name not in BACKBONES:
        raise EncoderError(f"unknown encoder {name!r}; choose from {', '.join(BACKBONES)} (each also as NAME{INT8})")
    backbone = BACKBONES[name]()
    size = size or backbone.size
    spec = EncoderSpec(name, file_sha256(backbone.weights_path), size, fit, backbone.dim)

    def make_net() -> object:
        from fashionrec.encoders.backbones import embedding_net  # torch: only to export or for the torch backend

        return embedding_net(backbone)

    if backend == "torch":
        return Encoder(spec, torch_runner(make_net()), "torch")
    onnx_path = onnx_cache_path(spec)
    if int8:
        return int8_encoder(spec, onnx_path, make_net, pixel_inputs, threads, calibration)
    return Encoder(spec, onnx_runner(make_net, onnx_path, size, threads), "onnx")


def onnx_cache_path(spec: EncoderSpec) -> Path:
    """Where a named backbone's exported float ONNX file is cached (one per weights and input size)."""
    return cache_dir() / "onnx" / f"{spec.name}-{spec.weights_sha256[:12]}-{spec.size}.onnx"


def encoder_for_index(spec: dict[str, object], backend: str = "onnx", threads: int = 0) -> Encoder:
    """The encoder an index was built with, or EncoderError if this machine's weights differ."""
    wanted = EncoderSpec.from_dict(spec)
    if wanted.model_dir is not None and not (Path(wanted.model_dir) / TRAINED_MANIFEST).is_file():
        raise EncoderError(f"the index was built with {wanted.id}, whose model directory {wanted.model_dir} is gone")
    name = wanted.name if wanted.model_dir is None else wanted.model_dir + (INT8 if split_int8(wanted.name)[1] else "")
    encoder = load_encoder(name, size=wanted.size, fit=wanted.fit, backend=backend, threads=threads)
    if encoder.spec != wanted:
        env = WEIGHTS_ENV.get(wanted.name)
        hint = f"; set {env} to the weights it was built with" if env else ""
        raise EncoderError(f"the index was built with encoder {wanted.id}, but this machine has {encoder.id}{hint}")
    return encoder
