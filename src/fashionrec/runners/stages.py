"""The stages of a build that every runner shares: what to embed, hashing, decoding, and what comes back.

A runner only decides where these run (worker processes here, Ray actors on a cluster); it never
changes what they do, so every runner stores the same vectors for the same catalog.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from fashionrec.catalog import Item, Problem
from fashionrec.colour import COLOUR_DIM, colour_vector
from fashionrec.images import Fit, ImageError, decode, fit_square

COMMIT_EVERY = 256  # images per transaction: small enough to lose little when killed


@dataclass(frozen=True)
class ToEmbed:
    """One item of the plan whose image must be embedded, with the content hash the plan read."""

    item: Item
    digest: str


@dataclass
class Embedded:
    """A batch a runner hands back: embedded items (vectors and colours in their order), and items that failed."""

    items: list[Item]
    digests: list[str]
    vectors: np.ndarray
    colours: np.ndarray
    problems: list[Problem] = field(default_factory=list)

    @classmethod
    def failed(cls, problems: list[Problem], dim: int) -> Embedded:
        """A batch of problems only: nothing to store."""
        return cls([], [], np.zeros((0, dim), np.float32), np.zeros((0, COLOUR_DIM), np.float32), problems)

    @property
    def done(self) -> int:
        """Items this batch settles, embedded or not: what the progress bar counts."""
        return len(self.items) + len(self.problems)


def content_hash(data: bytes) -> str:
    """What identifies an image: a rerun embeds an item again only when this changes."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def problem_of(item_id: str, name: str, error: ImageError | OSError) -> Problem:
    """The problem an unreadable or unusable image makes for its item (the build skips the item)."""
    if isinstance(error, ImageError):
        return Problem(item_id, f"image {error}")
    return Problem(item_id, f"cannot read image {name} ({error})")


@dataclass(frozen=True)
class Decoder:
    """Image bytes -> the square pixels one encoder takes, and their colour vector.

    Frozen and small, so a runner hands it to each worker process or actor when it builds them.
    """

    size: int
    fit: Fit

    def __call__(self, data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(pixels [S,S,3] uint8, colour vector); ImageError if the bytes are not a usable image."""
        pixels = fit_square(decode(data, name, min_side=self.size), self.size, self.fit)
        return pixels, colour_vector(pixels)
