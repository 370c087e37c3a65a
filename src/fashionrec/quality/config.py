"""Training settings (`fashionrec train`): kept apart from the training code so the CLI shows them without torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

RERUN_MAY_CHANGE = ("epochs", "label_weight", "base_weight")  # the rest must match to resume
# Epochs between held-out validations (and after the last): on the 44k catalog a validation takes about as
# long as an epoch's training (docs/performance.md), and it changes no weight.
VALIDATE_EVERY = 8
# The training steps' matrix products: "auto" is bf16 where the CPU computes it natively, else f32 (train.train).
# Not a TrainConfig setting: it changes how fast, not what is learnt, so a run may resume in the other.
Precision = Literal["auto", "f32", "bf16"]


@dataclass(frozen=True)
class TrainConfig:
    """What training does; all but RERUN_MAY_CHANGE must match to resume.

    A rerun may train longer, or re-export the trained model with other mixing weights (no training).
    """

    labels: tuple[str, ...] = ("articleType", "baseColour")
    epochs: int = 40
    seed: int = 0
    holdout: float = 0.2
    hidden: int = 2048
    dim: int = 256
    batch_size: int = 1024
    lr: float = 2e-3
    temperature: float = 0.1
    members: int = 3
    label_weight: float = 1.0
    base_weight: float = 0.4
    base_components: int = 256
    view_share: float = 0.0  # of each batch's items, the share seen as a shopper-like view (views.py); 0: none
    instance_weight: float = 1.0  # with views: weight of each view finding its own catalog shot among the batch's

    def settings(self) -> dict[str, object]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()} | {
            key: None for key in RERUN_MAY_CHANGE
        }


@dataclass(frozen=True)
class BridgeConfig:
    """What bridge training does (recorded in the bridge's manifest)."""

    epochs: int = 20
    batch_size: int = 1024
    embed_dim: int = 128
    hidden: int = 1024
    components: int = 256  # the image space's principal directions the bridge aims in
    lr: float = 3e-3
    temperature: float = 0.05  # initial; learnt
    seed: int = TrainConfig.seed
    holdout: float = TrainConfig.holdout
    validation: float = 0.0
    phrase_share: float = 0.3
    word_dropout: float = 0.15
