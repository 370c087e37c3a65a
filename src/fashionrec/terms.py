"""Weighted multi-term queries ("like this jacket, in red, not leather") and their colour model.

A query of several `Term`s is composed in the index's own vector space: the weighted sum of the
item/image/text vectors (negative weights subtract), normalised, then moved along each asked colour's
direction. A colour direction is learnt from the catalog itself, so it exists for any encoder (base or
trained): the mean, over the items labelled with that colour, of their vector minus their articleType's
mean vector (what that colour adds to a garment whatever its type). bench/terms.py measures the
strategies; docs/terms-and-feedback.md has the figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from fashionrec.colour import COLOUR_DIM
from fashionrec.encoders.spec import TRAINED_MANIFEST

TermKind = Literal["item", "image", "text", "colour"]
ColourStrategy = Literal["direction", "rerank", "label"]
TERM_KINDS: tuple[str, ...] = get_args(TermKind)
COLOUR_STRATEGIES: tuple[str, ...] = get_args(ColourStrategy)
MAX_TERMS = 32  # a query, or a feedback round, of more examples than this is a mistake, not a refinement
MAX_WEIGHT = 10.0
MAX_VALUE_CHARS = 1_000  # an id, a colour name or a text
COLOUR_COLUMN, TYPE_COLUMN = "baseColour", "articleType"
COLOUR_RERANK = 0.5  # colour-histogram weight of the "rerank" strategy (bench/terms.py)
FEEDBACK_COLOUR = 0.5  # recommend's colour re-rank by the liked examples' colours (bench/feedback.py)
LABEL_STEP = 0.25  # "label": the colour label already decides; a full step along the direction loses the type
DEFAULT_LABELS = (TYPE_COLUMN, COLOUR_COLUMN)  # label columns a refined query agrees with, unless trained on others
LABEL_WEIGHT = 0.2  # share of label agreement in a refined ranking: the least of 0.05/0.1/0.2 that met both targets
CHUNK = 8_192  # vectors read at a time when learning colours


class TermError(ValueError):
    """A term that cannot be used: says which one and why."""


@dataclass(frozen=True)
class Term:
    """One part of a query: a catalog item id, an image (path or bytes), a text or a colour name, and its weight.

    A negative weight steers away ("not leather"); 0 is refused (it would do nothing, silently).
    """

    kind: TermKind
    value: str | bytes | Path
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TERM_KINDS:
            raise TermError(f"unknown term kind {self.kind!r}; choose from {', '.join(TERM_KINDS)}")
        if not isinstance(self.weight, int | float) or not math.isfinite(self.weight):
            raise TermError(f"{self.label}: the weight must be a finite number, got {self.weight!r}")
        if self.weight == 0 or abs(self.weight) > MAX_WEIGHT:
            raise TermError(f"{self.label}: the weight must be non-zero and within ±{MAX_WEIGHT:g}, got {self.weight}")
        if self.kind != "image" and not (isinstance(self.value, str) and 0 < len(self.value) <= MAX_VALUE_CHARS):
            raise TermError(f"{self.label}: the value must be a text of 1 to {MAX_VALUE_CHARS:,} characters")

    @property
    def label(self) -> str:
        """How errors name this term: kind and a short form of its value."""
        shown = f"{len(self.value):,} bytes" if isinstance(self.value, bytes) else str(self.value)[:60]
        return f"{self.kind} term {shown!r}"

    @classmethod
    def parse(cls, spec: str) -> Term:
        """A term written KIND:VALUE[:WEIGHT], e.g. item:15970, colour:red:0.5, image:photo.jpg:-1, text:leather:-1.

        The value may itself hold colons (a text, a Windows path): only a last part that is a number is the weight.
        """
        kind, sep, rest = spec.partition(":")
        if not sep or not rest:
            raise TermError(f"term {spec!r}: write KIND:VALUE[:WEIGHT] with KIND one of {', '.join(TERM_KINDS)}")
        value, sep, weight = rest.rpartition(":")
        try:
            number = float(weight)
        except ValueError:
            sep = ""
        if not sep:
            value, number = rest, 1.0
        return cls(kind.strip().lower(), Path(value) if kind == "image" else value, number)  # type: ignore[arg-type]


def check_terms(terms: Sequence[Term]) -> None:
    """Refuse an empty query, one of too many terms, and one with nothing positive to look for."""
    if not terms:
        raise TermError("a query needs at least one term")
    if len(terms) > MAX_TERMS:
        raise TermError(f"too many terms: {len(terms):,} (the limit is {MAX_TERMS})")
    if not any(term.weight > 0 for term in terms):
        raise TermError("at least one term must have a positive weight: only negatives say nothing to look for")


def example_terms(
    positive: Sequence[str | bytes | Path], negative: Sequence[str | bytes | Path], text: str | None = None
) -> list[Term]:
    """Liked and disliked examples (item ids, or images as paths or bytes) as Qdrant's average-vector
    recommend weighs them: 2 * mean(liked) - mean(disliked); a `text` is one more liked example."""
    liked = len(positive) + (text is not None)
    if not liked:
        raise TermError("recommend needs at least one liked example")
    weights = ((positive, 2.0 / liked), (negative, -1.0 / max(len(negative), 1)))
    terms = [
        Term("item" if isinstance(example, str) else "image", example, weight)
        for examples, weight in weights
        for example in examples
    ]
    return terms if text is None else [Term("text", text, 2.0 / liked), *terms]


@dataclass(frozen=True)
class WantedLabels:
    """What a refined query wants of some label columns: per column, each value's want from -1 to 1.

    A candidate's agreement (`score`) is the mean over the columns of its values' wants; a refined ranking
    adds it to the similarity (LABEL_WEIGHT), so the catalog's own labels count, not only the look.
    """

    wants: dict[str, dict[str, float]]  # column -> value -> want

    def score(self, metadata: Mapping[str, str]) -> float:
        return sum(values.get(metadata.get(column, ""), 0.0) for column, values in self.wants.items()) / len(self.wants)


def wanted_labels(
    examples: Sequence[tuple[Mapping[str, str], float]], colours: Sequence[tuple[str, float]], columns: Sequence[str]
) -> WantedLabels | None:
    """The labels that weighted examples (an item's metadata, its term weight) and asked colours (name, weight)
    want, in `columns`: a value's want is its share of the positive examples' weight minus its share of the
    negative ones'. Asked colours decide the colour column: +1 each positive one (the examples' colours are
    then forgotten), -1 each refused one. None when nothing is wanted (no labelled example, no colour)."""
    wants: dict[str, dict[str, float]] = {}
    for column in columns:
        values: dict[str, float] = {}
        for sign in (1.0, -1.0):
            labelled = [(m[column], w) for m, w in examples if w * sign > 0 and m.get(column, "").strip()]
            total = sum(abs(w) for _, w in labelled)
            for value, weight in labelled:
                values[value] = values.get(value, 0.0) + weight / total
        if column == COLOUR_COLUMN and colours:
            values = {} if any(weight > 0 for _, weight in colours) else values
            values.update({name: math.copysign(1.0, weight) for name, weight in colours})
        if values:
            wants[column] = values
    return WantedLabels(wants) if wants else None


def trained_labels(encoder: Mapping[str, object]) -> tuple[str, ...]:
    """The label columns an index's trained encoder learnt (its model's manifest), else DEFAULT_LABELS."""
    model_dir = encoder.get("model_dir")
    try:
        manifest = json.loads((Path(str(model_dir)) / TRAINED_MANIFEST).read_text()) if model_dir else {}
    except (OSError, ValueError):  # the model folder is gone: the encoder's own load says so when it matters
        manifest = {}
    labels = manifest.get("labels") if isinstance(manifest, dict) else None
    return tuple(str(label) for label in labels) if isinstance(labels, list) and labels else DEFAULT_LABELS


@dataclass(frozen=True)
class ColourModel:
    """Per catalog colour: a direction in the index's vector space and a colour-histogram prototype."""

    names: tuple[str, ...]
    directions: np.ndarray  # [C, dim] unit vectors
    prototypes: np.ndarray  # [C, COLOUR_DIM] unit vectors: the mean colour histogram of the colour's items

    @classmethod
    def learn(
        cls,
        vectors: Callable[[np.ndarray], np.ndarray],
        colours: Sequence[str],
        types: Sequence[str],
        histograms: np.ndarray,
    ) -> ColourModel:
        """Learn from each item's vector (read in chunks by position), colour label, type label and histogram."""
        colour_names, colour_of = np.unique(np.asarray(colours, dtype=object), return_inverse=True)
        _, type_of = np.unique(np.asarray(types, dtype=object), return_inverse=True)
        n_colours, n_types = len(colour_names), int(type_of.max()) + 1 if len(type_of) else 0
        dim = vectors(np.zeros(1, dtype=np.int64)).shape[1]
        colour_sums, type_sums = np.zeros((n_colours, dim)), np.zeros((n_types, dim))
        for start in range(0, len(colours), CHUNK):
            positions = np.arange(start, min(start + CHUNK, len(colours)), dtype=np.int64)
            chunk = vectors(positions)
            colour_sums += _group_sums(colour_of[positions], n_colours, chunk)
            type_sums += _group_sums(type_of[positions], n_types, chunk)
        type_means = type_sums / np.maximum(np.bincount(type_of, minlength=n_types), 1)[:, None]
        both = np.zeros((n_colours, n_types))
        np.add.at(both, (colour_of, type_of), 1.0)
        directions = colour_sums - both @ type_means  # sum over a colour's items of (vector - its type's mean)
        prototypes = _group_sums(colour_of, n_colours, histograms)
        keep = np.array([name.strip() != "" for name in colour_names], dtype=bool)  # unlabelled items: no colour
        return cls(tuple(str(n) for n in colour_names[keep]), _unit(directions[keep]), _unit(prototypes[keep]))

    def find(self, name: str) -> int:
        """The row of a colour, matched without regard to case; TermError listing the colours if unknown."""
        wanted = name.strip().casefold()
        for row, known in enumerate(self.names):
            if known.casefold() == wanted:
                return row
        raise TermError(f"unknown colour {name!r}; this catalog's colours are {', '.join(self.names)}")


def _group_sums(groups: np.ndarray, count: int, rows: np.ndarray) -> np.ndarray:
    """[count, dim] sums of the rows of each group: a one-hot matrix product (np.add.at is ~20x slower)."""
    return (np.eye(count, dtype=np.float32)[groups].T @ rows.astype(np.float32)).astype(np.float64)


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def compose(
    examples: Sequence[tuple[np.ndarray, np.ndarray | None, float]],
    colours: Sequence[tuple[int, float]],
    model: ColourModel | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The query vector and colour histogram of weighted examples (vector, histogram or None, weight) and of
    colours (row in `model`, weight).

    Examples are summed by weight and normalised, so a colour's weight means the same with one example
    or ten; each colour then adds its direction times its weight. The histogram is the positive
    colours' prototypes if any were asked, else the positive examples' histograms.
    """
    vector = np.zeros(0, np.float32)
    if examples:
        vector = _unit(sum(weight * v.astype(np.float32) for v, _, weight in examples)[None, :])[0]
    histograms = [weight * h for _, h, weight in examples if weight > 0 and h is not None]
    if colours:
        if model is None:
            raise TermError("colour terms need the catalog's colour model")
        moved = sum(weight * model.directions[row] for row, weight in colours)
        vector = moved if not examples else vector + moved
        histograms = [weight * model.prototypes[row] for row, weight in colours if weight > 0] or histograms
    norm = float(np.linalg.norm(vector))
    if norm < 1e-6:
        raise TermError("the terms cancel out: their weighted sum is zero, so there is nothing to look for")
    histogram = sum(histograms) if histograms else np.zeros(COLOUR_DIM)
    return (vector / norm).astype(np.float32), _unit(np.atleast_2d(histogram))[0]


def label_filters(
    filters: Mapping[str, str | Sequence[str]] | None, colours: Sequence[tuple[str, float]], known: Iterable[str]
) -> dict[str, str | Sequence[str]]:
    """Filters that keep only the asked colours (positive weights) and drop the refused ones (negative), by the
    catalog's colour label, within what `filters` already allow; `known` is every label of the column."""
    merged = dict(filters or {})
    given = merged.get(COLOUR_COLUMN)
    allowed = set(known) if given is None else {given} if isinstance(given, str) else set(given)
    wanted = {name for name, weight in colours if weight > 0}
    allowed = (allowed & wanted if wanted else allowed) - {name for name, weight in colours if weight < 0}
    if not allowed:  # an empty filter would be no filter at all
        raise TermError("the colour terms and the colour filter leave no colour to show: ask for one they allow")
    merged[COLOUR_COLUMN] = sorted(allowed)
    return merged
