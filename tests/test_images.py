"""The safe decoder: every kind of bad file gives an ImageError naming the file and the problem."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from fashionrec.images import ImageError, decode, fit_square, open_image

from conftest import SHARED_ZIP


def real_jpeg(item_id: str = "15970") -> bytes:
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        return archive.read(f"images/{item_id}.jpg")


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_decodes_a_real_catalog_photo() -> None:
    image = decode(real_jpeg(), "15970.jpg")
    assert image.mode == "RGB" and image.size == (60, 80)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"name,price\nshirt,10\n", "not an image"),
        (real_jpeg()[:600], "corrupt or truncated"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 200, "not an image"),
        (encoded(Image.new("RGB", (16, 16)), "ICO"), "unsupported image format ICO"),
        (encoded(Image.new("1", (10_000, 10_000)), "PNG"), "image too large: Image size (100000000 pixels)"),
    ],
    ids=["empty", "text", "truncated", "garbage-jpeg-header", "unknown-format", "decompression-bomb"],
)
def test_bad_files_raise_a_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError) as raised:
        decode(data, "upload.jpg")
    assert str(raised.value).startswith("upload.jpg: ")
    assert reason in str(raised.value)


def test_open_image_names_the_file(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ImageError, match="no such file"):
        open_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        open_image(tmp_path)


def test_every_mode_becomes_rgb_on_white() -> None:
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert decode(encoded(transparent, "PNG"), "a.png").getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (8, 8))
    assert decode(encoded(palette, "GIF"), "a.gif").mode == "RGB"
    sixteen = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert decode(encoded(sixteen, "PNG"), "a.png").getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))
    assert decode(encoded(cmyk, "JPEG"), "a.jpg").getpixel((0, 0))[0] > 250
    gray = decode(encoded(Image.new("L", (8, 8), 40), "WEBP"), "a.webp")
    assert gray.mode == "RGB"


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored landscape, shown portrait
    data = encoded(Image.new("RGB", (80, 60)), "JPEG", exif=exif)
    assert decode(data, "phone.jpg").size == (60, 80)


def test_big_jpegs_decode_at_reduced_scale() -> None:
    big = encoded(Image.new("RGB", (2400, 1800), (200, 10, 10)), "JPEG")
    small = decode(big, "big.jpg", min_side=224)
    assert 224 <= min(small.size) < 1800


def test_pad_keeps_the_whole_product_and_crop_cuts_it() -> None:
    portrait = Image.new("RGB", (60, 80), (0, 0, 0))
    padded = fit_square(portrait, 224, "pad")
    assert padded.shape == (224, 224, 3)
    assert padded[112, 0].tolist() == [255, 255, 255]  # white margin beside the product
    assert padded[0, 112].tolist() == [0, 0, 0]  # top of the product kept
    cropped = fit_square(portrait, 224, "crop")
    assert (cropped == 0).all()  # filled with product, the top and bottom cut away
