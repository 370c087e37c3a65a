"""What names an encoder: its spec (recorded in every index), its error, and how a backbone is fed.

No torch, no ONNX Runtime: every other encoders module builds on this one, and importing it costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fashionrec.images import Fit

DEFAULT_ENCODER = "efficientnet-lite0"
DEFAULT_FIT: Fit = "pad"
TRAINED_MANIFEST = "fashionrec-model.json"  # marks a directory made by `fashionrec train`

Rgb = tuple[float, float, float]
IMAGENET_MEAN: Rgb = (0.485, 0.456, 0.406)
IMAGENET_STD: Rgb = (0.229, 0.224, 0.225)
HALF: Rgb = (0.5, 0.5, 0.5)  # mean = std = 0.5 scales RGB to [-1, 1]


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
