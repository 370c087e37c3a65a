"""Several photos per product (issue #15, item 5): image columns, rows repeating an id, one result per product
scored by its best photo, incremental builds per photo, the API's photo_urls and ?photo=N.

Real catalog images from the shared zip; a product's second photo is a shot of it made here (mirrored, cropped,
warmer light), as a shop's "back" or "detail" photo would be. Never written into the repository.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from fashionrec.api import create_app
from fashionrec.build import build_index
from fashionrec.catalog import CatalogError, Item, load_catalog
from fashionrec.encoders import Encoder
from fashionrec.index import DATABASE, IndexStore, photo_key
from fashionrec.search import Recommender, UnknownPhotoError

from conftest import copy_index, run_cli, sample_rows, write_catalog

PRODUCTS = 12
COLUMNS = ["id", "photo_front", "photo_back", "tag", "articleType", "productDisplayName"]


def second_shot(front: Path, to: Path) -> None:
    """Another photo of the same product: mirrored, cropped a little, in warmer light."""
    image = ImageOps.mirror(Image.open(front).convert("RGB"))
    width, height = image.size
    image = image.crop((2, 3, width - 3, height - 2)).resize((width, height))
    red, green, blue = image.split()
    image = Image.merge("RGB", (red.point(lambda v: min(255, v + 12)), green, blue))
    image.save(to, "JPEG", quality=90)


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows([COLUMNS, *rows])
    return path


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[str]]]:
    """A folder holding real product photos, a second shot of most of them, and the rows of its catalog:
    the last two products have one photo (an empty cell)."""
    header, rows = sample_rows(PRODUCTS, seed=15)
    folder = write_catalog(tmp_path_factory.mktemp("shop"), header, rows)
    at = {name: header.index(name) for name in ("articleType", "productDisplayName")}
    table = []
    for n, row in enumerate(rows):
        back = ""
        if n < PRODUCTS - 2:
            back = f"images/{row[0]}-back.jpg"
            second_shot(folder / f"images/{row[0]}.jpg", folder / back)
        table.append([row[0], f"images/{row[0]}.jpg", back, "a", row[at["articleType"]], row[at["productDisplayName"]]])
    return folder, table


@pytest.fixture(scope="module")
def multi_index(
    tmp_path_factory: pytest.TempPathFactory, shop: tuple[Path, list[list[str]]], encoder: Encoder, test_store: str
) -> Path:
    folder, rows = shop
    catalog = load_catalog(write_rows(folder / "products.csv", rows), image_column="photo_front,photo_back")
    out = tmp_path_factory.mktemp("multi") / "idx"
    build_index(catalog, out, encoder, workers=0, progress=False, store=test_store)
    return out


def test_image_columns_give_a_product_several_photos(shop: tuple[Path, list[list[str]]]) -> None:
    folder, rows = shop
    rows = [list(row) for row in rows]
    rows[1][2] = "images/nowhere.jpg"  # a missing second photo: the product keeps its first
    rows[2][1:3] = ["", rows[2][2]]  # no main photo: the second one is
    rows[3][1:3] = ["images/gone.jpg", ""]  # no usable photo at all: skipped, as today
    path = write_rows(folder / "columns.csv", rows)
    for spec in ("photo_front,photo_back", ["photo_front", "photo_back"], "photo_*"):
        catalog = load_catalog(path, image_column=spec)
        by_id = {item.id: item for item in catalog.items}
        assert by_id[rows[0][0]].images == (rows[0][1], rows[0][2])
        assert by_id[rows[1][0]].images == (rows[1][1],)
        assert by_id[rows[2][0]].images == (rows[2][2],)
        assert by_id[rows[-1][0]].images == (rows[-1][1],)  # an empty cell is no photo, and no problem
        assert rows[3][0] not in by_id
        problems = {(p.item, p.message, p.action) for p in catalog.problems}
        assert problems == {
            (rows[1][0], "image images/nowhere.jpg not found; the product keeps its other photos", "repaired"),
            (rows[3][0], "image images/gone.jpg not found", "skipped"),
        }
    assert load_catalog(path, image_column="photo_back,photo_front").items[0].image == rows[0][2]  # the order given
    with pytest.raises(CatalogError, match="no column matches the image column pattern 'picture_\\*'"):
        load_catalog(path, image_column="picture_*")
    with pytest.raises(CatalogError, match="no image column 'photo_side'"):
        load_catalog(path, image_column="photo_front,photo_side")


def test_rows_repeating_an_id_add_photos(shop: tuple[Path, list[list[str]]]) -> None:
    folder, rows = shop
    first, second = rows[0], rows[1]
    table = [
        first[:2] + [""] + first[3:],
        [first[0], first[2], "", *first[3:]],  # the same product, its second photo on a row of its own
        second[:2] + [""] + second[3:],
        [second[0], second[1], "", *second[3:]],  # the same photo again: a duplicate, as today
        [first[0], f"images/{second[0]}.jpg", "", "b", *first[4:]],  # a third photo, with other metadata
    ]
    catalog = load_catalog(write_rows(folder / "rows.csv", table), image_column="photo_front")
    assert [item.id for item in catalog.items] == [first[0], second[0]]
    assert catalog.items[0].images == (first[1], first[2], f"images/{second[0]}.jpg")
    assert catalog.items[0].metadata["tag"] == "a"  # the first row's
    messages = {(p.item, p.action): p.message for p in catalog.problems}
    assert messages[(second[0], "skipped")] == "duplicate id (line 5); the first row is kept"
    assert "line 6 repeats the id with other metadata" in messages[(first[0], "repaired")]


def test_one_result_per_product_scored_by_its_best_photo(multi_index: Path, shop: tuple[Path, list[list[str]]]) -> None:
    folder, rows = shop
    recommender = Recommender.open(multi_index)
    assert len(recommender) == PRODUCTS and recommender.records.count() == PRODUCTS
    assert len(recommender.records.photo_hashes()) == PRODUCTS - 2
    product = rows[3]
    for collapse in (True, False):
        matches = recommender.similar_to_image(folder / product[2], k=PRODUCTS, collapse=collapse)
        ids = [m.id for m in matches]
        assert len(ids) == len(set(ids))  # no product twice
        assert collapse or len(ids) == PRODUCTS  # and k products, though the store holds more vectors than that
        best = matches[0]
        assert best.id == product[0] and best.score > 0.999, best
        assert best.image == product[2] and best.photo == 1 and best.photos == (product[1], product[2])
        assert best.to_dict()["photos"] == [product[1], product[2]]
    one_photo = recommender.similar_to_image(folder / rows[-1][1], k=1)[0]
    assert one_photo.id == rows[-1][0] and one_photo.photos == (rows[-1][1],) and one_photo.photo == 0


def test_item_search_leaves_out_all_of_its_photos(multi_index: Path, shop: tuple[Path, list[list[str]]]) -> None:
    _, rows = shop
    recommender = Recommender.open(multi_index)
    for product in (rows[0], rows[-1]):
        matches = recommender.similar_to_item(product[0], k=PRODUCTS, collapse=False)
        assert product[0] not in {m.id for m in matches}
        assert len(matches) == PRODUCTS - 1  # every other product once: its own photos took no place
    store = recommender.store
    keys = [rows[0][0], photo_key(rows[0][0], rows[0][2])]
    query = recommender.snapshot.product_query(rows[0][0])
    mean = store.vectors(keys).mean(axis=0)
    assert (
        abs(float(query.vector @ mean) / float((mean @ mean) ** 0.5 * (query.vector @ query.vector) ** 0.5) - 1) < 1e-5
    )


def test_adding_or_removing_one_photo_embeds_only_it(
    tmp_path: Path, shop: tuple[Path, list[list[str]]], encoder: Encoder, test_store: str
) -> None:
    folder, rows = shop
    rows = [list(row) for row in rows]
    path, out = folder / "incremental.csv", tmp_path / "idx"

    def build(rows: list[list[str]]) -> tuple[int, int]:
        catalog = load_catalog(write_rows(path, rows), image_column="photo_*")
        report = build_index(catalog, out, encoder, workers=0, progress=False, store=test_store)
        return report.embedded, len(IndexStore.open(out).photo_hashes())

    assert build(rows) == (PRODUCTS + PRODUCTS - 2, PRODUCTS - 2)
    dropped = rows[0][2]
    rows[0][2] = ""
    assert build(rows) == (0, PRODUCTS - 3)  # its key is gone, nothing embedded
    rows[-1][2] = dropped
    assert build(rows) == (1, PRODUCTS - 2)  # another product's new photo: only it
    rows[4][3] = "b"  # metadata of a product with two photos: its second photo's vector is filtered on it too
    assert build(rows) == (0, PRODUCTS - 2)
    recommender = Recommender.open(out)
    (found,) = recommender.similar_to_image(folder / rows[4][2], k=3, filters={"tag": ["b"]})
    assert found.id == rows[4][0] and found.photo == 1 and found.score > 0.999
    assert recommender.photos(rows[-1][0]) == (rows[-1][1], dropped)
    recommender.update_item(rows[4][0], {"tag": "c"})  # through the API's path: both photos follow
    (found,) = recommender.similar_to_image(folder / rows[4][2], k=3, filters={"tag": ["c"]})
    assert found.id == rows[4][0] and found.photo == 1
    recommender.remove_item(rows[4][0])
    assert photo_key(rows[4][0], rows[4][2]) not in IndexStore.open(out).photo_hashes()
    assert rows[4][0] not in {m.id for m in recommender.similar_to_image(folder / rows[4][2], k=PRODUCTS)}


def test_an_older_index_s_id_holding_a_hash_stays_its_own_product(multi_index: Path, tmp_path: Path) -> None:
    """A product is another's photo only when the photos table says so: never guessed from a '#' in an id."""
    index = copy_index(multi_index, tmp_path / "idx")
    records = IndexStore.open(index)
    first = next(iter(records.records()))[0]
    twin = Item(f"{first.id}#1", first.image, {"tag": "old"})  # as an older fashionrec let ids hold '#'
    records.put([twin], [first.image_hash], records.store.vectors([first.id]), records.store.colours([first.id]))
    records.close()
    recommender = Recommender.open(index)
    assert recommender.item(twin.id).metadata == {"tag": "old"} and recommender.photos(twin.id) == (first.image,)
    assert len(recommender.photos(first.id)) == 2  # its own photos only
    ids = [m.id for m in recommender.similar_to_item(first.id, k=PRODUCTS, collapse=False)]
    assert twin.id in ids and first.id not in ids


def test_api_photo_urls_and_photo_numbers(multi_index: Path, shop: tuple[Path, list[list[str]]]) -> None:
    folder, rows = shop
    product = rows[2]
    with TestClient(create_app(multi_index)) as client:
        item = client.get(f"/v1/items/{product[0]}").json()
        base = f"/v1/items/{product[0]}/image"
        assert item["photo_urls"] == [base, f"{base}?photo=1"]
        second = client.get(f"{base}?photo=1")
        assert second.status_code == 200 and second.content == (folder / product[2]).read_bytes()
        assert client.get(base).content == (folder / product[1]).read_bytes()
        missing = client.get(f"{base}?photo=2")
        assert missing.status_code == 404 and "has no photo 2: it has 2" in missing.json()["detail"]
        for bad in ("-1", "x", "1e9"):  # the API answers bad parameters 400, with the reason
            refused = client.get(f"{base}?photo={bad}")
            assert refused.status_code == 400 and "photo" in refused.json()["detail"], refused.text
        single = rows[-1][0]
        assert client.get(f"/v1/items/{single}").json()["photo_urls"] == [f"/v1/items/{single}/image"]
        assert client.get(f"/v1/items/{single}/image?photo=1").status_code == 404
        listed = {i["id"]: i["photo_urls"] for i in client.get("/v1/items", params={"limit": 100}).json()["items"]}
        assert len(listed[product[0]]) == 2 and len(listed[single]) == 1
        photo = (folder / product[2]).read_bytes()
        found = client.post("/v1/search", files={"image": ("back.jpg", photo, "image/jpeg")}, params={"k": 3}).json()
        best = found["results"][0]
        assert best["id"] == product[0] and best["image_url"] == f"{base}?photo=1"
        assert best["photo_urls"] == item["photo_urls"]
        similar = client.get(f"/v1/items/{product[0]}/similar", params={"k": PRODUCTS}).json()["results"]
        assert product[0] not in {m["id"] for m in similar}
    with pytest.raises(UnknownPhotoError):
        Recommender.open(multi_index).image_bytes(product[0], 5)


def test_cli_builds_from_an_image_column_pattern(tmp_path: Path, shop: tuple[Path, list[list[str]]]) -> None:
    folder, rows = shop
    path = write_rows(folder / "cli.csv", rows)
    out = tmp_path / "idx"
    built = run_cli("index", str(path), "--out", str(out), "--image-column", "photo_*", "--workers", "0")
    assert built.returncode == 0, built.stderr
    with sqlite3.connect(out / DATABASE) as db:
        assert db.execute("SELECT COUNT(*) FROM photos").fetchone()[0] == PRODUCTS - 2
    found = run_cli("search", str(out), str(folder / rows[5][2]), "-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    best = json.loads(found.stdout)[0]
    assert best["id"] == rows[5][0] and best["image"] == rows[5][2] and best["photos"] == rows[5][1:3]


@pytest.mark.milvus
def test_milvus_store_one_result_per_product(
    tmp_path: Path, shop: tuple[Path, list[list[str]]], encoder: Encoder
) -> None:
    folder, rows = shop
    catalog = load_catalog(write_rows(folder / "milvus.csv", rows), image_column="photo_front,photo_back")
    out = tmp_path / "idx"
    build_index(catalog, out, encoder, workers=0, progress=False, store="milvus://milvus.db")
    recommender = Recommender.open(out)
    matches = recommender.similar_to_image(folder / rows[3][2], k=PRODUCTS, collapse=False)
    assert len({m.id for m in matches}) == len(matches) == PRODUCTS
    assert matches[0].id == rows[3][0] and matches[0].photo == 1
    assert rows[3][0] not in {m.id for m in recommender.similar_to_item(rows[3][0], k=PRODUCTS, collapse=False)}
    recommender.remove_item(rows[3][0])
    assert rows[3][0] not in {m.id for m in recommender.similar_to_image(folder / rows[3][2], k=PRODUCTS)}
    with pytest.raises(KeyError):
        recommender.store.vectors([photo_key(rows[3][0], rows[3][2])])


def test_one_photo_per_product_stays_as_it_was(built_index: tuple[Path, object]) -> None:
    """A catalog of one photo per product has no photo records; its matches list the one photo."""
    recommender = Recommender.open(built_index[0])
    assert recommender.records.photos() == [] and recommender.snapshot.photos_per_product == 1
    item = recommender.items[7]
    match = recommender.similar_to_item(item.id, k=1)[0]
    assert match.photos == (match.image,) and match.photo == 0
    assert io.BytesIO(recommender.image_bytes(item.id, 0)).read() == recommender.image_bytes(item.id)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_builds_photos_as_local_does(
    tmp_path: Path, shop: tuple[Path, list[list[str]]], encoder: Encoder, ray_instance: None
) -> None:
    """A build on Ray records the same photos, so the local runner then finds nothing to embed, and back."""
    folder, rows = shop
    path, out = write_rows(folder / "ray.csv", rows), tmp_path / "idx"
    report = build_index(load_catalog(path, image_column="photo_*"), out, encoder, runner="ray", progress=False)
    assert (report.embedded, report.total) == (2 * PRODUCTS - 2, PRODUCTS)
    rows = [list(row) for row in rows]
    rows[0][2] = ""
    again = build_index(load_catalog(write_rows(path, rows), image_column="photo_*"), out, encoder, runner="ray")
    assert again.embedded == 0 and len(IndexStore.open(out).photo_hashes()) == PRODUCTS - 3
    local = build_index(load_catalog(path, image_column="photo_*"), out, encoder, workers=0, progress=False)
    assert local.embedded == 0
