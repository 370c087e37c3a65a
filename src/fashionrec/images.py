"""Images stage: one safe decoder for catalog files, uploads and camera shots.

Everything that reaches the model goes through `decode`, so a bad file gives the same clear
`ImageError` wherever it comes from, and no input can exhaust memory (decompression bombs).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

MAX_BYTES = 40 * 1024 * 1024
MAX_PIXELS = 50_000_000  # about 8000 x 6000; larger images are refused before decoding
FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"}
BACKGROUND = (255, 255, 255)  # catalog photos are shot on white

Fit = Literal["pad", "crop", "trim-stretch"]
TRIM_TOLERANCE = 32  # a pixel further than this (any channel) from the border colour is product, not backdrop
TRIM_MARGIN = 0.03  # kept around the trimmed product, as a share of its longer side
TRIM_MIN_PIXELS = 2  # in a row or column for it to be product: a lone noisy pixel is not
TRIM_MAX_BORDER = 0.25  # a border with more pixels off its median colour is no plain backdrop: no cut
TRIM_DETECT_SIDE = 256  # the backdrop is found on a copy reduced to about this size: cheap for big photos

# Pillow checks the pixel count from the header, before decoding; its warning is made an error below.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Pillow refuses PNG text and ICC profile chunks over 1 MiB (decompressed) as corrupt; product shots
# with a 2 MiB camera profile are real. The file limit bounds them instead (still 64 MiB in all).
PngImagePlugin.MAX_TEXT_CHUNK = max(PngImagePlugin.MAX_TEXT_CHUNK, MAX_BYTES)


class ImageError(ValueError):
    """An image that cannot be used, with the item or file it belongs to and why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class ImageTooLarge(ImageError):
    """An image over the byte or pixel limit: refused before it is decoded (an API answers 413)."""


def decode(data: bytes, name: str, *, min_side: int | None = None) -> Image.Image:
    """Decode image bytes into an upright RGB image, or raise ImageError saying what is wrong.

    `min_side` lets big JPEGs decode at a reduced scale (libjpeg's DCT scaling), which is many times
    faster for the 2400x1800 photos of the full-size catalog; the result keeps at least that size.
    """
    if not data:
        raise ImageError(name, "empty file")
    if len(data) > MAX_BYTES:
        raise ImageTooLarge(name, too_large(len(data), MAX_BYTES))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise ImageError(name, f"unsupported image format {image.format}")
            if image.width * image.height > MAX_PIXELS:
                size = f"{image.width}x{image.height} pixels"
                raise ImageTooLarge(name, f"image too large ({size}, limit {MAX_PIXELS:,})")
            if min_side and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLarge(name, f"image too large: {error}") from None
    except UnidentifiedImageError:
        raise ImageError(name, "not an image (unrecognised file format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(name, f"corrupt or truncated image data ({error})") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB on white, whatever the mode: palette, alpha, grayscale, CMYK or 16-bit."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def read_regular_file(path: str | Path, name: str, limit: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file, never more than `limit`: devices, FIFOs and folders are refused
    (ImageError); a missing file raises FileNotFoundError, as callers tell "gone" apart.

    The size is checked before reading (no 2 GB read to learn a file is too large), the read itself
    is bounded (a file may grow meanwhile), and the open never blocks (a FIFO with no writer).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(name, "is a directory, not an image file") from None
    except OSError as error:
        raise ImageError(name, f"cannot read file ({error.strerror})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(name, "is a directory, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(name, "not a regular file (a device, FIFO or socket)")
        if info.st_size > limit:
            raise ImageTooLarge(name, too_large(info.st_size, limit))
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(limit + 1)
    except OSError as error:
        raise ImageError(name, f"cannot read file ({error.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ImageTooLarge(name, too_large(len(data), limit))
    return data


def too_large(size: int, limit: int) -> str:
    """The reason given for a file over the limit."""
    return f"file too large ({size / 2**20:.0f} MiB, limit {limit // 2**20} MiB)"


def open_image(path: str | Path, *, min_side: int | None = None) -> Image.Image:
    """Read and decode an image file, with the file's name in any error."""
    try:
        data = read_regular_file(path, str(path))
    except FileNotFoundError:
        raise ImageError(str(path), "no such file") from None
    return decode(data, str(path), min_side=min_side)


def fit_square(image: Image.Image, size: int, fit: Fit = "pad") -> np.ndarray:
    """The image as a size x size x 3 uint8 array, ready for the model.

    `pad` keeps the whole product (portrait catalog shots would lose shoes and hems to a crop) and
    fills the margins with white; `crop` fills the square and cuts the long side. `trim-stretch` cuts
    the photo to the product (see `trim`) and stretches that to the square, so a shopper's photo with
    other margins, resolution or aspect ratio gives the same pixels as the catalog shot, at the cost of
    the product's proportions (README, "Robustness to real photos").
    """
    if fit == "trim-stretch":
        return np.asarray(trim(image).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0), dtype=np.uint8)
    width, height = image.size
    scale = size / max(width, height) if fit == "pad" else size / min(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    canvas.paste(resized, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def backdrop_colour(pixels: np.ndarray) -> np.ndarray:
    """The colour the product is shot on: the median of the image's outermost rows and columns."""
    frame = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return np.median(frame, axis=0).astype(np.int16)


def trim(image: Image.Image) -> Image.Image:
    """The image cut to the product: the box of the pixels that differ from the backdrop, plus a margin.

    The backdrop is the border's colour, whatever it is (white, grey, a wall). An image that is all
    backdrop, or whose border is not one colour (a gradient, a busy scene), is returned whole: a
    wrong cut would hurt more than none. A row or column needs TRIM_MIN_PIXELS differing pixels to
    count, so JPEG noise around the product does not move the box.
    """
    factor = max(1, max(image.size) // TRIM_DETECT_SIDE)
    pixels = np.asarray(image.reduce(factor) if factor > 1 else image, dtype=np.int16)
    product = (np.abs(pixels - backdrop_colour(pixels)) > TRIM_TOLERANCE).any(axis=2)
    border = np.concatenate([product[0], product[-1], product[:, 0], product[:, -1]])
    rows = np.flatnonzero(product.sum(axis=1) >= TRIM_MIN_PIXELS)
    columns = np.flatnonzero(product.sum(axis=0) >= TRIM_MIN_PIXELS)
    if border.mean() > TRIM_MAX_BORDER or rows.size == 0 or columns.size == 0:
        return image
    box = np.array([columns[0], rows[0], columns[-1] + 1, rows[-1] + 1]) * factor
    margin = round(TRIM_MARGIN * max(box[2] - box[0], box[3] - box[1]))
    left, top = max(0, box[0] - margin), max(0, box[1] - margin)
    right, bottom = min(image.width, box[2] + margin), min(image.height, box[3] + margin)
    return image.crop((left, top, right, bottom))
