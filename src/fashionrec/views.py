"""Shopper-like views of catalog photos, for training: so a photo and its catalog product land together.

Training from catalog vectors alone taught the adapter that every input is a 60x80 studio shot on
white; a shopper's photo of the same product (another backdrop, framing, light, JPEG) then fell far
from it (exact-product R@1 0.46 on phone-like edits, against 0.78 for the untrained encoder). Each
view is one random mix of such edits of a catalog photo, then brought to the catalog's detail as a
query is (`images.match_detail`). The edits are deliberately plain (no other products as clutter, no
people): the benchmarks' composites (bench/world.py) stay unlike what training saw.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage

from fashionrec.colour import colour_vector
from fashionrec.images import Detail, decode, fit_square, match_detail
from fashionrec.runners.stages import Decoder

WHITE_LEVEL = 235  # a pixel brighter than this in every channel, connected to the border, is the studio white


def studio_white(pixels: np.ndarray) -> np.ndarray:
    """[H, W] bool: the catalog's white backdrop (near-white pixels connected to the border)."""
    near_white = pixels.min(axis=2) > WHITE_LEVEL
    labels, _ = ndimage.label(near_white)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, border[border > 0])


def backdrop(size: tuple[int, int], rng: random.Random) -> np.ndarray:
    """A random backdrop [H, W, 3]: a flat colour, a gradient, or a noisy texture (fabric, wood, floor)."""
    width, height = size
    noise = np.random.default_rng(rng.randrange(2**32))
    first = np.array([rng.randrange(256) for _ in range(3)], np.float32)
    second = np.array([rng.randrange(256) for _ in range(3)], np.float32)
    kind = rng.choice(["flat", "gradient", "texture", "white"])
    if kind == "white":
        return np.full((height, width, 3), 255, np.uint8)
    if kind == "flat":
        return np.broadcast_to(first, (height, width, 3)).astype(np.uint8)
    if kind == "gradient":
        ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        return np.broadcast_to(first + (second - first) * ramp, (height, width, 3)).astype(np.uint8)
    sigma = (rng.uniform(0.5, 3), rng.uniform(0.5, 6))  # fine grain, or streaks like wood and floorboards
    grain = ndimage.gaussian_filter(noise.normal(0, 1, (height, width)), sigma=sigma)
    grain = (grain - grain.min()) / (np.ptp(grain) or 1.0)
    return (first + (second - first) * grain[:, :, None]).clip(0, 255).astype(np.uint8)


def shopper_view(image: Image.Image, detail: Detail | None, rng: random.Random) -> Image.Image:
    """One random shopper-like photo of a catalog product, as the query path would give it to the model."""
    pixels = np.asarray(image.convert("RGB"))
    if rng.random() < 0.8:  # another backdrop
        mask = studio_white(pixels)
        pixels = np.where(mask[:, :, None], backdrop(image.size, rng), pixels)
    view = Image.fromarray(pixels.astype(np.uint8))
    fill = tuple(pixels[0, 0].tolist())  # the backdrop's colour at a corner, for what framing uncovers
    if rng.random() < 0.5:  # framed wider, off centre
        scale = rng.uniform(1.0, 1.6)
        canvas = Image.new("RGB", (round(view.width * scale), round(view.height * scale)), fill)
        canvas.paste(
            view, (rng.randrange(canvas.width - view.width + 1), rng.randrange(canvas.height - view.height + 1))
        )
        view = canvas
    elif rng.random() < 0.4:  # cut into the product
        width, height = view.size
        keep = rng.uniform(0.75, 0.95)
        left, top = rng.uniform(0, 1 - keep) * width, rng.uniform(0, 1 - keep) * height
        view = view.crop((round(left), round(top), round(left + keep * width), round(top + keep * height)))
    if rng.random() < 0.5:
        view = view.rotate(rng.uniform(-12, 12), Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
    if rng.random() < 0.6:  # light: brighter or darker, warmer or colder, more or less contrast
        view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.7, 1.25))
        view = ImageEnhance.Contrast(view).enhance(rng.uniform(0.75, 1.25))
        tint = np.array([rng.uniform(0.9, 1.1) for _ in range(3)], np.float32)
        view = Image.fromarray((np.asarray(view, np.float32) * tint).clip(0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        view = view.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        view.save(buffer, "JPEG", quality=rng.randrange(30, 90))
        view = decode(buffer.getvalue(), "view")
    return match_detail(view, detail)


@dataclass(frozen=True)
class ViewDecoder(Decoder):
    """Image bytes -> the model's pixels of one shopper-like view of them, and their colour vector.

    A runner's workers call it instead of the plain Decoder, so training's views are made in worker
    processes while the model embeds the previous batch, as a build's catalog images are (see
    docs/performance.md for what it saves). Each image's view is drawn from a generator seeded by its
    name: the same views on every run, whatever the worker.
    """

    detail: Detail | None = None

    def __call__(self, data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
        view = shopper_view(decode(data, name), self.detail, random.Random(f"view:{name}"))
        pixels = fit_square(view, self.size, self.fit)
        return pixels, colour_vector(pixels)
