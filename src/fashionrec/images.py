"""Images stage: one safe decoder for catalog files, uploads and camera shots.

Everything that reaches the model goes through `decode`, so a bad file gives the same clear
`ImageError` wherever it comes from, and no input can exhaust memory (decompression bombs).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError

MAX_BYTES = 40 * 1024 * 1024
MAX_PIXELS = 50_000_000  # about 8000 x 6000; larger images are refused before decoding
FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"}
BACKGROUND = (255, 255, 255)  # catalog photos are shot on white
WEB_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
WEB_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA"}  # 8-bit modes every browser shows
NUMERIC_MODES = ("I", "F", "I;16")  # I;16B, I;16L, I;16N too: one number per pixel, of any range
SHOWN_SIDE = 1024  # an image shown larger is shrunk first (pages scale it to its column anyway)

Fit = Literal["pad", "crop", "trim-stretch"]
Box = tuple[float, float, float, float]  # left, top, right, bottom as fractions of the width and height
TRIM_TOLERANCE = 32  # a pixel further than this (any channel) from the border colour is product, not backdrop
TRIM_MARGIN = 0.03  # kept around the trimmed product, as a share of its longer side
TRIM_MIN_PIXELS = 2  # in a row or column for it to be product: a lone noisy pixel is not
TRIM_MAX_BORDER = 0.25  # a border with more pixels off its median colour is no plain backdrop: no cut
TRIM_DETECT_SIDE = 256  # the backdrop is found on a copy reduced to about this size: cheap for big photos
CATALOG_FRAMING = 0.5  # a product over this share of the photo's longer side is framed like a catalog shot
DETAIL_TOLERANCE = 1.15  # a query product up to this much larger than the catalog's is left as it is
DETAIL_DECODE_SIDE = 512  # catalog images are measured at about this size: enough to find the product's box
DETAIL_SAMPLE = 256  # catalog images measured for their level of detail at the end of a build

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
    """8-bit RGB on white, whatever the mode: palette, alpha, 1-bit, grey, 16-bit, 32-bit int or float, CMYK,
    LAB, HSV, YCbCr. Numeric modes are scaled from min(0, lowest) to their highest value (NaN and inf as 0).
    """
    if image.mode.startswith(NUMERIC_MODES):
        array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low = min(0.0, float(array.min(initial=0.0)))
        span = float(array.max(initial=0.0)) - low or 1.0
        image = Image.fromarray(((array - low) * (255.0 / span)).astype(np.uint8), "L")
    if image.mode == "LAB":
        lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
        return ImageCms.applyTransform(image, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))  # type: ignore[return-value]
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def web_image(data: bytes, name: str) -> tuple[bytes, str]:
    """Image bytes every browser shows, and their content type: the stored bytes when they already are
    (an 8-bit JPEG, PNG, WebP or GIF of at most SHOWN_SIDE), else the image decoded, made 8-bit RGB, shrunk
    to SHOWN_SIDE (each side at least 1 pixel) and saved as PNG.

    A 16-bit PNG, a float TIFF or a CMYK JPEG would show as a broken picture, and a 5000x1 strip would crash
    Streamlit's own resizing (to a height of 0).
    """
    try:
        with Image.open(io.BytesIO(data)) as header:
            modes = ("L", "RGB") if header.format == "JPEG" else WEB_MODES
            if header.format in WEB_FORMATS and header.mode in modes and max(header.size) <= SHOWN_SIDE:
                return data, WEB_FORMATS[header.format]
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        pass  # decode says why
    image = decode(data, name)
    if max(image.size) > SHOWN_SIDE:
        scale = SHOWN_SIDE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    output = io.BytesIO()
    image.save(output, "PNG")
    return output.getvalue(), "image/png"


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
    return decode(read_image(path), str(path), min_side=min_side)


def read_image(path: str | Path) -> bytes:
    """An image file's bytes, not yet decoded; a missing file is an ImageError naming it."""
    try:
        return read_regular_file(path, str(path))
    except FileNotFoundError:
        raise ImageError(str(path), "no such file") from None


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
    if fit == "crop" and max(width, height) > 4 * min(width, height):
        # The centre square first: a 5000x1 image must not be resized to 1120000x224 before the cut.
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
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


def product_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The box (left, top, right, bottom) of the pixels that differ from the backdrop, plus a margin.

    The backdrop is the border's colour, whatever it is (white, grey, a wall). None for an image that
    is all backdrop, or whose border is not one colour (a gradient, a busy scene): a wrong box would
    hurt more than none. A row or column needs TRIM_MIN_PIXELS differing pixels to count, so JPEG noise
    around the product does not move the box.
    """
    factor = max(1, max(image.size) // TRIM_DETECT_SIDE)
    pixels = np.asarray(image.reduce(factor) if factor > 1 else image, dtype=np.int16)
    product = (np.abs(pixels - backdrop_colour(pixels)) > TRIM_TOLERANCE).any(axis=2)
    border = np.concatenate([product[0], product[-1], product[:, 0], product[:, -1]])
    rows = np.flatnonzero(product.sum(axis=1) >= TRIM_MIN_PIXELS)
    columns = np.flatnonzero(product.sum(axis=0) >= TRIM_MIN_PIXELS)
    if border.mean() > TRIM_MAX_BORDER or rows.size == 0 or columns.size == 0:
        return None
    box = np.array([columns[0], rows[0], columns[-1] + 1, rows[-1] + 1]) * factor
    margin = round(TRIM_MARGIN * max(box[2] - box[0], box[3] - box[1]))
    left, top = max(0, box[0] - margin), max(0, box[1] - margin)
    right, bottom = min(image.width, box[2] + margin), min(image.height, box[3] + margin)
    return int(left), int(top), int(right), int(bottom)


def trim(image: Image.Image) -> Image.Image:
    """The image cut to the product (`product_box`), or whole where no plain backdrop frames it."""
    box = product_box(image)
    return image if box is None else image.crop(box)


def product_side(image: Image.Image) -> int:
    """The product's longer side in pixels (the whole image where no plain backdrop frames it)."""
    box = product_box(image)
    return max(image.size) if box is None else max(box[2] - box[0], box[3] - box[1])


@dataclass(frozen=True)
class Detail:
    """What a catalog's photos are like: their longer side in pixels, and the share of it the product fills.

    A query photo sharper than the catalog is embedded differently from the blurry catalog copy of the
    same product (a 225x300 photo of a product the catalog holds at 60x80 found it first 78% of the
    time): `match_detail` brings it down to `frame_side` first, so both are equally blurred once fitted
    to the model's input. `product_fill` says how catalog shots frame their product (a crop box is
    widened to it).
    """

    frame_side: int
    product_fill: float

    @classmethod
    def measure(cls, sides: Iterable[tuple[int, int]]) -> Detail | None:
        """The median over catalog images' (frame side, product side) pairs (`sides_of`); None if none."""
        pairs = np.array(list(sides), dtype=np.float64).reshape(-1, 2)
        if not len(pairs):
            return None
        return cls(int(np.median(pairs[:, 0])), round(float(np.median(pairs[:, 1] / pairs[:, 0])), 3))

    def to_dict(self) -> dict[str, float]:
        return {"frame_side": self.frame_side, "product_fill": self.product_fill}

    @classmethod
    def from_dict(cls, data: object) -> Detail | None:
        """The detail an index manifest records; None for an index built before it was recorded."""
        if not isinstance(data, dict) or "frame_side" not in data:
            return None
        return cls(int(data["frame_side"]), float(data.get("product_fill", 1.0)))


def sides_of(data: bytes, name: str) -> tuple[int, int]:
    """A catalog image's longer side and its product's, in the image's own pixels (big JPEGs drafted)."""
    image = decode(data, name, min_side=DETAIL_DECODE_SIDE)
    frame = max(Image.open(io.BytesIO(data)).size)  # the header: what `decode` may have drafted down
    return frame, round(product_side(image) * frame / max(image.size))


def match_detail(image: Image.Image, detail: Detail | None, cut_to_product: bool = False) -> Image.Image:
    """The query brought down (anti-aliased) to the catalog's level of detail; unchanged if not sharper.

    Only ever shrinks, so a catalog of large photos (1000+ px) leaves ordinary queries as they are. What is
    matched depends on what is known of the product's place in the photo:
    - a photo framed like a catalog shot (a plain backdrop, the product over CATALOG_FRAMING of the longer
      side): its frame, to the catalog's frame (the model sees both fitted alike, so equal frames mean
      equal blur, whatever the product's own size);
    - a product cut out (a crop box, garment isolation), or small on a plain backdrop: its size, to the
      catalog's product size (`frame_side * product_fill`);
    - a busy scene (no plain backdrop frames the product): nothing, since shrinking the whole scene would
      leave the product far blurrier than any catalog shot (measured: -5 points of type P@5 on
      bench/world.py); cut the garment out or crop to it first.
    """
    if detail is None:
        return image
    product = detail.frame_side * detail.product_fill
    if cut_to_product:
        side, target = max(image.size), product
    else:
        box = product_box(image)
        if box is None:
            return image
        side = max(box[2] - box[0], box[3] - box[1])
        if side >= CATALOG_FRAMING * max(image.size):
            side, target = max(image.size), float(detail.frame_side)
        else:
            target = product
    if side <= target * DETAIL_TOLERANCE:
        return image
    scale = target / side
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def crop(image: Image.Image, box: Box) -> Image.Image:
    """The part of a photo a shopper pointed at; the box is in fractions, so it holds at any decoded size."""
    left, top, right, bottom = box
    if not all(0.0 <= v <= 1.0 for v in box) or left >= right or top >= bottom:
        raise ValueError(
            f"crop box {list(box)} must be left, top, right, bottom fractions of the photo, between 0 and 1, "
            "with left < right and top < bottom"
        )
    pixels = (
        int(left * image.width),
        int(top * image.height),
        max(int(left * image.width) + 1, round(right * image.width)),
        max(int(top * image.height) + 1, round(bottom * image.height)),
    )
    return image.crop(pixels)


def parse_box(text: str) -> Box:
    """A crop box as the CLI and the API take it: "left,top,right,bottom", fractions between 0 and 1."""
    try:
        left, top, right, bottom = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"crop box {text!r} is not left,top,right,bottom (e.g. 0.1,0.2,0.9,0.8)") from None
    return left, top, right, bottom
