"""Variety: one product listed under several ids comes back once (its other ids as variants), and MMR spreads results.

The catalog is real: sampled products, plus byte-identical copies of one product's image under new ids (the
red T-shirt of issue #15 is listed three times) and a lossless re-save of another (a different file, nearly
the same vector).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from streamlit.testing.v1 import AppTest

import fashionrec.app
from fashionrec.api import create_app
from fashionrec.build import build_index
from fashionrec.catalog import load_catalog
from fashionrec.encoder import Encoder
from fashionrec.search import DUPLICATE_COSINE, Recommender

from conftest import run_cli, sample_rows, write_catalog

COPIES = ("900001", "900002")  # the same image file as the original, under new ids
Catalog = tuple[Path, list[str], list[list[str]]]  # folder, header, rows
RESAVED = "900003"  # the second product's image saved again as PNG: another hash, nearly the same vector


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    header, rows = sample_rows(60, seed=15)
    folder = write_catalog(tmp_path_factory.mktemp("variety"), header, rows)
    original, second = rows[0], rows[1]
    images = folder / "images"
    gender = header.index("gender")
    extra = []
    for copy in COPIES:
        (images / f"{copy}.jpg").write_bytes((images / f"{original[0]}.jpg").read_bytes())
        extra.append([copy, *original[1:]])
    extra[1][gender] = "Unisex" if original[gender] != "Unisex" else "Men"  # a copy a filter tells apart
    buffer = io.BytesIO()
    Image.open(images / f"{second[0]}.jpg").save(buffer, "PNG")  # same pixels, other bytes
    (images / f"{RESAVED}.jpg").write_bytes(buffer.getvalue())
    extra.append([RESAVED, *second[1:]])
    write_catalog(folder, header, [*rows, *extra])
    return folder, header, [*rows, *extra]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog, encoder: Encoder) -> Path:
    out = tmp_path_factory.mktemp("variety-index") / "idx"
    build_index(load_catalog(catalog[0]), out, encoder, workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def recommender(index: Path) -> Recommender:
    return Recommender.open(index)


def original_photo(catalog: Catalog) -> Path:
    return catalog[0] / "images" / f"{catalog[2][0][0]}.jpg"


def test_same_image_under_three_ids_is_one_result(recommender: Recommender, catalog: Catalog) -> None:
    same = {catalog[2][0][0], *COPIES}
    found = recommender.similar_to_image(original_photo(catalog), k=5)
    assert len(found) == 5 and [m.rank for m in found] == [1, 2, 3, 4, 5]
    assert {found[0].id, *found[0].variants} == same and len(found[0].variants) == 2
    assert not same & {m.id for m in found[1:]}  # k distinct products still come back
    assert found[0].to_dict()["variants"] == list(found[0].variants)

    plain = recommender.similar_to_image(original_photo(catalog), k=5, collapse=False)
    assert {m.id for m in plain[:3]} == same and all(m.variants == () for m in plain)
    assert plain[0].score == pytest.approx(plain[2].score, abs=1e-5)


def test_near_identical_vectors_collapse(recommender: Recommender, catalog: Catalog) -> None:
    second = catalog[2][1][0]
    vectors = recommender.store.vectors([second, RESAVED])
    assert float(vectors[0] @ vectors[1]) > DUPLICATE_COSINE  # another file, the same picture
    assert recommender.item(second).image_hash != recommender.item(RESAVED).image_hash
    found = recommender.similar_to_image(catalog[0] / "images" / f"{second}.jpg", k=3)
    assert {found[0].id, *found[0].variants} == {second, RESAVED}


def test_similar_to_item_drops_its_own_duplicates(recommender: Recommender, catalog: Catalog) -> None:
    original = catalog[2][0][0]
    found = recommender.similar_to_item(original, k=4)
    assert len(found) == 4 and not {original, *COPIES} & {m.id for m in found}
    assert {m.id for m in recommender.similar_to_item(original, k=4, collapse=False)[:2]} == set(COPIES)


def test_filters_and_colour_weight_hold(recommender: Recommender, catalog: Catalog) -> None:
    header, original = catalog[1], catalog[2][0]
    gender = original[header.index("gender")]
    found = recommender.similar_to_image(original_photo(catalog), k=3, filters={"gender": gender}, colour_weight=0.3)
    assert len(found) == 3 and all(m.metadata["gender"] == gender for m in found)
    assert {found[0].id, *found[0].variants} == {original[0], COPIES[0]}  # the other copy is filtered out


def test_diversity_reranks_deterministically(recommender: Recommender, catalog: Catalog) -> None:
    photo = original_photo(catalog)
    plain = recommender.similar_to_image(photo, k=6)
    spread = recommender.similar_to_image(photo, k=6, diversity=0.7)
    assert [m.id for m in spread] != [m.id for m in plain]
    assert spread[0].id == plain[0].id  # the best match is always first
    assert [m.id for m in recommender.similar_to_image(photo, k=6, diversity=0.7)] == [m.id for m in spread]
    assert [m.id for m in recommender.similar_to_image(photo, k=6, diversity=0.0)] == [m.id for m in plain]
    with pytest.raises(ValueError, match="diversity"):
        recommender.similar_to_item(catalog[2][0][0], diversity=1.5)


def test_api_exposes_variants_collapse_and_diversity(index: Path, catalog: Catalog) -> None:
    original = catalog[2][0][0]
    with TestClient(create_app(index)) as client:
        photo = original_photo(catalog).read_bytes()
        found = client.post("/v1/search", params={"k": 3}, files={"image": ("p.jpg", photo, "image/jpeg")}).json()
        assert {found["results"][0]["id"], *found["results"][0]["variants"]} == {original, *COPIES}
        plain = client.post(
            "/v1/search", params={"k": 3, "collapse": "false"}, files={"image": ("p.jpg", photo, "image/jpeg")}
        ).json()
        assert {m["id"] for m in plain["results"]} == {original, *COPIES}
        similar = client.get(f"/v1/items/{original}/similar", params={"k": 3, "diversity": 0.5})
        assert similar.status_code == 200 and all("variants" in m for m in similar.json()["results"])
        assert client.get(f"/v1/items/{original}/similar", params={"diversity": 2}).status_code == 400


def test_cli_exposes_variants(index: Path, catalog: Catalog) -> None:
    original = catalog[2][0][0]
    photo = str(original_photo(catalog))
    found = json.loads(run_cli("search", str(index), photo, "-k", "3", "--json").stdout)
    assert sorted(found[0]["variants"] + [found[0]["id"]]) == sorted([original, *COPIES])
    plain = json.loads(run_cli("search", str(index), photo, "-k", "3", "--json", "--no-collapse").stdout)
    assert {m["id"] for m in plain} == {original, *COPIES}
    table = run_cli("similar", str(index), original, "-k", "3", "--diversity", "0.5")
    assert table.returncode == 0 and "variants" in table.stdout


def test_app_shows_variants_and_a_variety_slider(
    index: Path, recommender: Recommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = next(i.id for i in recommender.items if any(m.variants for m in recommender.similar_to_item(i.id)))
    monkeypatch.setattr(sys, "argv", [str(fashionrec.app.SCRIPT), str(index)])
    page = AppTest.from_file(str(fashionrec.app.SCRIPT), default_timeout=60)
    page.run()
    page.sidebar.radio(key="mode").set_value("catalog")
    page.run()
    page.sidebar.text_input(key="product_text").input(query)
    page.run()
    assert not page.exception
    assert any("more listing" in c.value for c in page.caption)
    page.sidebar.slider(key="diversity").set_value(0.6)
    page.run()
    shown = [b.key.removeprefix("result-") for b in page.button if b.key and b.key.startswith("result-")]
    assert shown == [m.id for m in recommender.similar_to_item(query, 5, diversity=0.6)]
