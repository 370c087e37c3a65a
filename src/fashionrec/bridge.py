"""Search by words, part two: the text bridge, a small text encoder that lands on the images' vectors.

Why: a product's name often says little ("Puma Men Ferrari Tee"); its photo shows a red short-sleeved
t-shirt. Trained on the catalog's names (and phrases of its metadata words, what a shopper types),
the bridge maps a text into the index's own vector space, so the image index itself answers a text
query: a product is found by its look. Nothing but numpy serves it, in well under a millisecond.

The encoder: hashed features of the text (its words, word pairs and the character 3- to 5-grams of
each word, so a misspelt word still shares most of its features) -> the mean of their learnt
embeddings -> LayerNorm -> MLP -> a unit vector in the span of the image vectors' top principal
directions (quality.train_text.principal_directions). It is trained (quality/train_text.py) with a contrastive
loss against the index's stored image vectors.

    MODEL_DIR/bridge.json   manifest: format, the index encoder id it serves, sizes, split, figures
    MODEL_DIR/bridge.npz    the weights (numpy, loaded with allow_pickle=False); its sha256 is in the manifest

A bridge serves only the encoder it was trained for (the image vectors of another encoder live in
another space): loading it for another index is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashionrec.index import make_dir, write_bytes_atomic, write_json_atomic
from fashionrec.text import words

BRIDGE_FORMAT = 1
BRIDGE_MANIFEST = "bridge.json"
BRIDGE_WEIGHTS = "bridge.npz"
DEFAULT_DIR = "text-bridge"  # inside an index directory: where the Recommender looks for its bridge
BUCKETS = 2**15  # hashed feature ids; the catalog's names hold ~40k distinct features, most of them rare
GRAMS = (3, 4, 5)
WEIGHT_NAMES = ("embedding", "norm_weight", "norm_bias", "w1", "b1", "w2", "b2", "basis")


class BridgeError(ValueError):
    """A text bridge that cannot be used here: missing or damaged files, or another index's encoder."""


def features(text: str) -> np.ndarray:
    """Hashed feature ids of a text: words, adjacent word pairs, and character n-grams of each word."""
    tokens = words(text)
    keys = [f"w:{w}" for w in tokens] + [f"p:{a}_{b}" for a, b in zip(tokens, tokens[1:], strict=False)]
    for word in tokens:
        padded = f"<{word}>"
        keys += [f"c:{padded[i : i + n]}" for n in GRAMS for i in range(len(padded) - n + 1)]
    return np.fromiter((zlib.crc32(key.encode()) % BUCKETS for key in keys), dtype=np.int64, count=len(keys))


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form: the one torch trains with (approximate="tanh"), so numpy gives the same vectors."""
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))


@dataclass(frozen=True)
class TextBridge:
    """A trained text encoder: text -> a unit vector in the index's image space."""

    encoder_id: str  # the index encoder whose vectors it was trained on
    weights: dict[str, np.ndarray]
    manifest: dict[str, object]

    @property
    def dim(self) -> int:
        return int(self.weights["basis"].shape[0])

    def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] unit vectors (a text with no features gives zeros: it matches nothing)."""
        w = self.weights
        bags = np.zeros((len(texts), w["embedding"].shape[1]), dtype=np.float32)
        for row, text in enumerate(texts):
            ids = features(text)
            if len(ids):
                bags[row] = w["embedding"][ids].astype(np.float32).mean(axis=0)
        mean = bags.mean(axis=1, keepdims=True)
        normed = (bags - mean) / np.sqrt(bags.var(axis=1, keepdims=True) + 1e-5) * w["norm_weight"] + w["norm_bias"]
        out = (gelu(normed @ w["w1"].T + w["b1"]) @ w["w2"].T + w["b2"]) @ w["basis"].T
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        empty = ~bags.any(axis=1, keepdims=True)
        return np.where(empty, 0.0, out / np.maximum(norms, 1e-12)).astype(np.float32)

    def save(self, directory: Path) -> None:
        """Weights then manifest, each written atomically: a reader sees the old bridge or the new one."""
        make_dir(directory)
        buffer = _npz_bytes(self.weights)
        write_bytes_atomic(directory / BRIDGE_WEIGHTS, buffer)
        manifest = self.manifest | {"encoder_id": self.encoder_id, "weights_sha256": hashlib.sha256(buffer).hexdigest()}
        write_json_atomic(directory / BRIDGE_MANIFEST, manifest)

    @classmethod
    def load(cls, directory: Path, encoder_id: str) -> TextBridge:
        """The bridge of a model directory, for an index made with encoder `encoder_id` (else BridgeError)."""
        manifest_path, weights_path = directory / BRIDGE_MANIFEST, directory / BRIDGE_WEIGHTS
        try:
            manifest = json.loads(manifest_path.read_text())
            data = weights_path.read_bytes()
        except (OSError, ValueError) as error:
            raise BridgeError(f"{directory}: not a usable text bridge ({error})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != BRIDGE_FORMAT:
            raise BridgeError(f"{manifest_path}: not a text bridge of format {BRIDGE_FORMAT}; train it again")
        if manifest.get("encoder_id") != encoder_id:
            raise BridgeError(
                f"{directory}: this text bridge was trained for encoder {manifest.get('encoder_id')!r}, but the index "
                f"uses {encoder_id!r}; train one for this index with `fashionrec train-text INDEX`"
            )
        if manifest.get("buckets") != BUCKETS:
            raise BridgeError(
                f"{manifest_path}: made by another version of fashionrec (feature buckets); train it again"
            )
        if hashlib.sha256(data).hexdigest() != manifest.get("weights_sha256"):
            raise BridgeError(f"{weights_path}: the weights do not match their manifest (changed or damaged)")
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            weights = {name: stored[name] for name in WEIGHT_NAMES}
        return cls(encoder_id, weights, manifest)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
