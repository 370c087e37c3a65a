"""Query side of shoppers' photos: the catalog's detail recorded and matched, crop boxes; catalog images untouched."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionrec.build import build_index
from fashionrec.catalog import load_catalog
from fashionrec.encoders import Encoder
from fashionrec.images import Detail, decode, match_detail, sides_of
from fashionrec.search import Recommender
from fashionrec.views import ViewDecoder, shopper_view

from conftest import run_cli, sample_rows, side_by_side, write_catalog

KAGGLE = Detail(frame_side=80, product_fill=0.84)


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_the_index_records_the_catalogs_detail(built_index: tuple[Path, object]) -> None:
    manifest = json.loads((built_index[0] / "manifest.json").read_text())
    detail = Detail.from_dict(manifest["detail"])
    assert detail is not None and detail.frame_side == 80  # the Kaggle "small" photos are 60x80
    assert 0.5 < detail.product_fill <= 1.0


def test_sides_of_measures_a_big_photo_in_its_own_pixels() -> None:
    photo = Image.new("RGB", (1800, 2400), "white")
    photo.paste((30, 60, 200), (400, 300, 1400, 2100))  # a 1000 x 1800 product
    frame, product = sides_of(jpeg(photo), "big.jpg")
    assert frame == 2400 and abs(product - 1800 * 1.06) < 60  # plus the trim margin


def shot(size: tuple[int, int], share: float) -> Image.Image:
    """A blue product filling `share` of the height of a white photo, centred."""
    image = Image.new("RGB", size, "white")
    height = round(size[1] * share)
    width = round(height * 0.6)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    image.paste((30, 60, 200), (left, top, left + width, top + height))
    return image


def test_a_sharper_query_is_brought_down_to_the_catalog_and_nothing_else_is() -> None:
    assert match_detail(shot((225, 300), 0.9), KAGGLE).size == (60, 80)  # framed like a catalog shot: its frame
    assert match_detail(shot((224, 224), 0.9), KAGGLE).size == (80, 80)
    small = match_detail(shot((900, 1200), 0.3), KAGGLE).size  # small on a plain backdrop: the product's size
    assert abs(small[1] * 0.3 * 1.06 - 80 * 0.84) < 4  # (the product's box has a 3% margin each side)
    assert match_detail(Image.new("RGB", (300, 300)), KAGGLE, cut_to_product=True).size == (67, 67)
    for unchanged in [(60, 80), (45, 60), (70, 90)]:  # as blurry as the catalog, or blurrier: left alone
        image = shot(unchanged, 0.9)
        assert match_detail(image, KAGGLE) is image
    boards = np.random.default_rng(0).integers(0, 255, (30, 1, 3), dtype=np.uint8)  # floor boards of 30 colours
    scene = Image.fromarray(np.repeat(np.repeat(boards, 30, axis=0), 1200, axis=1))
    scene.paste((30, 60, 200), (500, 300, 620, 500))
    assert match_detail(scene, KAGGLE) is scene  # a busy scene: where the product is, and how big, is unknown
    photo = shot((225, 300), 0.9)
    assert match_detail(photo, None) is photo  # an index built before detail was recorded
    large_catalog = Detail(frame_side=2400, product_fill=0.8)  # a shop's full-size photos lose nothing
    assert match_detail(shot((1200, 1600), 0.9), large_catalog).size == (1200, 1600)


def test_match_detail_is_deterministic_and_anti_aliased() -> None:
    stripes = np.zeros((300, 225, 3), np.uint8)
    stripes[::2] = 255  # one-pixel stripes: point sampling would keep black or white rows, not grey
    image = Image.fromarray(stripes)
    first, second = (np.asarray(match_detail(image, KAGGLE, cut_to_product=True)) for _ in range(2))
    assert np.array_equal(first, second)
    assert 100 < first[10:-10].mean() < 155


@pytest.fixture(scope="module")
def blurry_index(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> tuple[Recommender, Path]:
    """An index of 120 real products whose catalog photos are reduced to half size (30x40)."""
    header, rows = sample_rows(120, seed=11)
    sharp = write_catalog(tmp_path_factory.mktemp("sharp"), header, rows)
    blurry = write_catalog(tmp_path_factory.mktemp("blurry"), header, rows)
    for path in (blurry / "images").glob("*.jpg"):
        image = decode(path.read_bytes(), path.name)
        image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS).save(path, quality=95)
    out = tmp_path_factory.mktemp("index") / "idx"
    build_index(load_catalog(blurry), out, encoder, workers=0, progress=False)
    return Recommender.open(out), sharp


@pytest.mark.slow
def test_sharper_photos_find_their_product_once_detail_is_matched(blurry_index: tuple[Recommender, Path]) -> None:
    """The real 60x80 photos hold twice the detail of this catalog: without matching, some miss."""
    recommender, sharp = blurry_index
    assert recommender.detail is not None and recommender.detail.frame_side == 40
    photos = sorted((sharp / "images").glob("*.jpg"))[:40]
    squashed = [jpeg(decode(p.read_bytes(), p.name).resize((224, 224), Image.Resampling.LANCZOS)) for p in photos]
    matched = [recommender.similar_to_image(data, k=1)[0].id for data in squashed]
    detail, recommender.detail = recommender.detail, None
    try:
        as_sent = [recommender.similar_to_image(data, k=1)[0].id for data in squashed]
    finally:
        recommender.detail = detail
    truth = [p.stem for p in photos]
    hits = sum(a == b for a, b in zip(matched, truth, strict=True))
    misses_before = sum(a != b for a, b in zip(as_sent, truth, strict=True))
    assert hits >= 36 and misses_before > len(photos) - hits  # the fix shows, and the failure showed first


@pytest.mark.slow
def test_a_product_added_through_the_api_is_embedded_like_the_catalog(blurry_index: tuple[Recommender, Path]) -> None:
    """Query-side steps never touch catalog images: an added product's vector is the build's."""
    recommender, sharp = blurry_index
    photo = sorted((sharp / "images").glob("*.jpg"))[0]
    recommender.add_item("added-1", photo.read_bytes(), {"productDisplayName": "added"})
    try:
        vector = recommender.store.vectors(["added-1"])[0]
        built = recommender.encoder.embed([decode(photo.read_bytes(), photo.name)])[0]
        assert np.allclose(vector, built, atol=2e-3)  # the index keeps float16
    finally:
        recommender.remove_item("added-1")


@pytest.mark.slow
def test_a_crop_box_searches_the_part_of_the_photo_pointed_at(built_index: tuple[Path, object], tmp_path: Path) -> None:
    recommender = Recommender.open(built_index[0])
    first, second = sorted((Path(recommender.images.root) / "images").glob("*.jpg"))[:2]
    photo = side_by_side(first, second)
    assert recommender.similar_to_image(photo, k=1, crop_box=(0.0, 0.0, 0.5, 1.0))[0].id == first.stem
    assert recommender.similar_to_image(photo, k=1, crop_box=(0.5, 0.0, 1.0, 1.0))[0].id == second.stem
    for bad in [(0.5, 0.0, 0.5, 1.0), (-0.1, 0.0, 0.5, 1.0), (0.0, 0.0, 1.2, 1.0)]:
        with pytest.raises(ValueError, match="crop box"):
            recommender.similar_to_image(photo, crop_box=bad)

    path = tmp_path / "two.jpg"
    path.write_bytes(photo)
    found = run_cli("search", str(built_index[0]), str(path), "--crop", "0.5,0,1,1", "--json", "-k", "1")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["id"] == second.stem
    refused = run_cli("search", str(built_index[0]), str(path), "--crop", "0.5,0,1")
    assert refused.returncode == 2 and "crop box '0.5,0,1'" in refused.stderr and "Traceback" not in refused.stderr
    cut_out = run_cli("search", str(built_index[0]), str(path), "--isolate", "border", "--json", "-k", "2")
    assert cut_out.returncode == 0 and len(json.loads(cut_out.stdout)) == 2, cut_out.stderr
    assert run_cli("search", str(built_index[0]), str(path), "--isolate", "magic").returncode == 2


def test_shopper_views_are_deterministic_and_change_the_backdrop(catalog_photo: Path) -> None:
    """Training's shopper-like views (views.py): the same view for the same seed, off the studio white."""
    image = decode(catalog_photo.read_bytes(), catalog_photo.name)
    views = [shopper_view(image, KAGGLE, random.Random(f"view:{n}")) for n in range(12)]
    again = shopper_view(image, KAGGLE, random.Random("view:0"))
    assert np.array_equal(np.asarray(views[0]), np.asarray(again))
    assert all(max(view.size) <= 80 * 1.15 for view in views)  # brought to the catalog's detail, as a query
    corners = [np.asarray(view)[0, 0] for view in views]
    assert sum(corner.min() < 200 for corner in corners) >= 4  # many are not on white any more


def test_view_decoder_gives_each_image_its_own_view_on_every_call(catalog_photo: Path) -> None:
    """What training's workers make (views.ViewDecoder): one view per image name, the model's size."""
    data, decoder = catalog_photo.read_bytes(), ViewDecoder(160, "pad", KAGGLE)
    pixels, colour = decoder(data, "a.jpg")
    assert pixels.shape == (160, 160, 3) and pixels.dtype == np.uint8 and colour.ndim == 1
    assert np.array_equal(decoder(data, "a.jpg")[0], pixels)  # whichever worker makes it, whenever
    others = [decoder(data, f"{n}.jpg")[0] for n in range(4)]
    assert any(not np.array_equal(other, pixels) for other in others)
