"""Shoppers' photos: the trim fit modes cut to the product, and real photos of a product find it first."""

from __future__ import annotations

import io
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from PIL import Image

from fashionrec.build import build_index
from fashionrec.catalog import load_catalog
from fashionrec.encoders import load_encoder
from fashionrec.images import TRIM_MARGIN, Fit, backdrop_colour, decode, fit_square, trim
from fashionrec.search import Recommender

from conftest import sample_rows, write_catalog

FIT = "trim-stretch"


def product_on(backdrop: tuple[int, int, int], canvas: tuple[int, int] = (300, 200)) -> Image.Image:
    """A 40 x 100 red product at (50, 30) on a canvas of one colour, with much more room right and below."""
    image = Image.new("RGB", canvas, backdrop)
    image.paste((200, 30, 30), (50, 30, 90, 130))
    return image


def jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def test_trim_cuts_a_white_canvas_to_the_product_and_its_margin() -> None:
    margin = round(TRIM_MARGIN * 100)
    assert trim(product_on((255, 255, 255))).size == (40 + 2 * margin, 100 + 2 * margin)


def test_trim_finds_a_backdrop_that_is_not_white() -> None:
    image = product_on((90, 120, 160))
    assert backdrop_colour(np.asarray(image)).tolist() == [90, 120, 160]
    margin = round(TRIM_MARGIN * 100)
    assert trim(image).size == (40 + 2 * margin, 100 + 2 * margin)


def test_trim_survives_jpeg_noise_and_big_photos() -> None:
    photo = decode(jpeg(product_on((255, 255, 255)).resize((2400, 1600)), quality=40), "photo.jpg")
    width, height = trim(photo).size
    assert 320 <= width <= 380 and 800 <= height <= 880  # 40 x 100 at x8, plus margins


@pytest.mark.parametrize("fit", get_args(Fit))
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (200, 50)])
@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0)])
def test_every_fit_handles_tiny_and_blank_images(fit: Fit, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    pixels = fit_square(Image.new("RGB", size, colour), 64, fit)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8


def test_trim_stretch_fills_the_square_with_the_product() -> None:
    pixels = fit_square(product_on((255, 255, 255)), 64, "trim-stretch")
    assert (pixels[32, :, 1] < 100).mean() > 0.8  # red (low green) from margin to margin


@pytest.fixture(scope="module")
def trimmed_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recommender, Path]:
    header, rows = sample_rows(100, seed=7)
    folder = write_catalog(tmp_path_factory.mktemp("catalog"), header, rows)
    out = tmp_path_factory.mktemp("index") / "idx"
    build_index(load_catalog(folder), out, load_encoder(fit=FIT), workers=0, progress=False)
    return Recommender.open(out), folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda image: jpeg(image.resize((image.width * 8, image.height * 8), Image.LANCZOS)), id="x8"),
        pytest.param(lambda image: jpeg(image, quality=25), id="jpeg-q25"),
    ],
)
def test_a_shoppers_photo_of_a_product_finds_it_first(trimmed_index: tuple[Recommender, Path], make) -> None:
    recommender, folder = trimmed_index
    photos = sorted((folder / "images").glob("*.jpg"))[:10]
    for photo in photos:
        query = make(decode(photo.read_bytes(), photo.name))
        assert recommender.similar_to_image(query, k=1)[0].id == photo.stem
