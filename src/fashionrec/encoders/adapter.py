"""The trained adapter's torch nets: what `fashionrec train` fits and what a model directory runs.

Inference needs them only to export the ONNX graph or for the torch backend (trained.py imports
this module lazily); training (fashionrec.quality.train) builds on them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fashionrec.colour import COLOUR_DIM
from fashionrec.encoders.backbones import embedding_net
from fashionrec.encoders.spec import Backbone

COSINE_SCALE = 16.0  # logit scale of the cosine classifier heads
DROPOUT = 0.1


class Dropout(nn.Module):
    """nn.Dropout with its mask drawn as 16-bit integers, four from each 64-bit random number.

    Why: on CPU, nn.Dropout draws one random number per element (`bernoulli_`), which took 13% of
    a training step of make run's adapter (2 cores); 64-bit draws are ~4x fewer calls for the same mask
    distribution (p rounded to 1/65536). Like nn.Dropout it follows torch's seed and is off in eval().
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return inputs
        count = inputs.numel()
        draws = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=inputs.device)
        bits = draws.view(torch.int16)[:count].view(inputs.shape)
        keep = bits >= round(self.p * 65536) - 32768
        return torch.where(keep, inputs / (1 - self.p), 0.0)


class Member(nn.Module):
    """One MLP (base vector + colour vector -> unit vector) with a cosine classifier per label on its output."""

    def __init__(self, in_dim: int, hidden: int, dim: int, class_counts: Sequence[int]) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), Dropout(DROPOUT), nn.Linear(hidden, dim)
        )
        self.heads = nn.ParameterList([nn.Parameter(torch.randn(n, dim) * 0.01) for n in class_counts])

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        embedded = F.normalize(self.net(inputs), dim=1)
        return embedded, [COSINE_SCALE * embedded @ F.normalize(w, dim=1).T for w in self.heads]


ADAPTER_SETTINGS = ("hidden", "dim", "members", "label_weight", "base_weight", "base_components")


class Adapter(nn.Module):
    """Base vector + colour vector -> the trained vector: the part of the encoder that training changes.

    The trained part is an ensemble of `members` MLPs, trained side by side from different initial
    weights: each member's unit vector (scaled by 1/sqrt(members)), then, per label, the members'
    mean class probabilities scaled by sqrt(label_weight). Its dot product is the members' mean
    cosine plus label_weight x the probability that both items have the same class, per label,
    divided by 1 + labels x label_weight so that it is at most 1. Training pulls products of the same
    class together, which loses what tells one product from its look-alikes; so the vector ends with
    the base vector itself, reduced by PCA to `base_components` (fitted on the training items, kept
    as buffers) and normalised: the similarity is (1 - base_weight) x trained + base_weight x base,
    and a shopper's photo of a catalog product still finds that product first. Every part was
    measured to pay (README, "Train on your own catalog"). The vectors are not normalised again:
    that would favour items whose class is uncertain.

    The two weights are buffers, so the state dict (and the encoder id, its hash) covers them; they
    only mix the parts, so a rerun of `train` with other weights re-exports the model without training.
    """

    def __init__(
        self,
        base_dim: int,
        class_counts: Sequence[int],
        *,
        hidden: int,
        dim: int,
        members: int,
        label_weight: float,
        base_weight: float,
        base_components: int,
    ) -> None:
        super().__init__()
        in_dim = base_dim + COLOUR_DIM
        self.members = nn.ModuleList([Member(in_dim, hidden, dim, class_counts) for _ in range(members)])
        self.register_buffer("label_weight", torch.tensor(float(label_weight)))
        self.register_buffer("base_weight", torch.tensor(float(base_weight)))
        self.register_buffer("base_mean", torch.zeros(base_dim))
        self.register_buffer("base_basis", torch.zeros(base_dim, base_components))

    def fit_base_basis(self, vectors: torch.Tensor) -> None:
        """The PCA of the (training items') base vectors: the directions that tell products apart most."""
        mean = vectors.mean(dim=0)
        centred = vectors - mean
        _, eigenvectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        self.base_mean.copy_(mean)
        self.base_basis.copy_(eigenvectors.flip(dims=[1])[:, : self.base_basis.shape[1]])

    def parts(self, vectors: torch.Tensor, colours: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """Each member's unit vector and class logits per label: what training scores."""
        inputs = torch.cat([vectors, colours], dim=1)
        return [member(inputs) for member in self.members]

    def forward(self, vectors: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        parts = self.parts(vectors, colours)
        shape = torch.cat([embedded for embedded, _ in parts], dim=1) / math.sqrt(len(parts))
        labels = len(parts[0][1])
        probabilities = [
            torch.stack([F.softmax(logits[label], dim=1) for _, logits in parts]).mean(dim=0) for label in range(labels)
        ]
        base = F.normalize((vectors - self.base_mean) @ self.base_basis, dim=1)
        trained = torch.cat([shape, *(self.label_weight.sqrt() * p for p in probabilities)], dim=1)
        trained_scale = ((1 - self.base_weight) / (1 + labels * self.label_weight)).sqrt()
        return torch.cat([trained_scale * trained, self.base_weight.sqrt() * base], dim=1)


class TrainedNet(nn.Module):
    """uint8 pixels -> base encoder, with their colour vector -> adapter: the graph exported to ONNX."""

    def __init__(self, base: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, pixels: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(pixels), colour)


def trained_net(backbone: Backbone, adapter: dict[str, Any], adapter_path: Path) -> nn.Module:
    """The torch model of a model directory (the reference, and the source of its ONNX graph)."""
    return TrainedNet(embedding_net(backbone), load_adapter(adapter, adapter_path)).eval()  # type: ignore[arg-type]


def load_adapter(adapter: dict[str, Any], adapter_path: Path) -> Adapter:
    """The adapter of a model directory, from its manifest's "adapter" entry and its state dict."""
    module = Adapter(adapter["base_dim"], adapter["class_counts"], **{key: adapter[key] for key in ADAPTER_SETTINGS})
    module.load_state_dict(torch.load(adapter_path, map_location="cpu", weights_only=True))
    return module.eval()
