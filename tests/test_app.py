"""The web app's logic, driven by Streamlit's AppTest over the real 300-product index.

Every query mode (upload, camera, random, id, words), the filters and k, "more like this" and back,
bad uploads, and the explore page. The real browser test is in test_app_browser.py.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import fashionrec.app
from fashionrec.app.explore_page import embedding_map
from fashionrec.build import BuildReport
from fashionrec.explore import MAP_FILE, read_map, write_map
from fashionrec.index import IndexStore
from fashionrec.search import Recommender

from conftest import copy_index, side_by_side

APP = fashionrec.app.SCRIPT


@pytest.fixture
def index(built_index: tuple[Path, BuildReport], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The index, passed to the page the way `fashionrec app` does: after `--` on the command line."""
    monkeypatch.setattr(sys, "argv", [str(APP), str(built_index[0])])
    return built_index[0]


@pytest.fixture
def page(index: Path) -> AppTest:
    return run(AppTest.from_file(str(APP), default_timeout=60))


def run(page: AppTest) -> AppTest:
    page.run()
    assert not page.exception, [e.value for e in page.exception]
    return page


def result_ids(page: AppTest) -> list[str]:
    """Ids of the result cards, in rank order (their "More like this" buttons are keyed by id)."""
    return [b.key.removeprefix("result-") for b in page.button if b.key and b.key.startswith("result-")]


def query_id(page: AppTest) -> str | None:
    return page.session_state["query"].item_id


def choose_mode(page: AppTest, mode: str) -> AppTest:
    page.sidebar.radio(key="mode").set_value(mode)
    return run(page)


def test_start_page_offers_products_to_start_from(page: AppTest) -> None:
    assert page.title[0].value == "Find your look-alike"
    assert len([b for b in page.button if b.key.startswith("pick-")]) == 5
    assert page.sidebar.radio(key="mode").value == "upload"


def test_upload_finds_the_catalog_product_itself_first(page: AppTest, catalog_photo: Path) -> None:
    page.sidebar.file_uploader(key="upload").upload(catalog_photo.name, catalog_photo.read_bytes(), "image/jpeg")
    run(page)
    assert page.session_state["query"].title == "Your photo"
    ids = result_ids(page)
    assert len(ids) == 5 and ids[0] == catalog_photo.stem
    assert not any("Similarity" in c.value or f"#{catalog_photo.stem}" in c.value for c in page.caption)
    page.sidebar.toggle(key="details").set_value(True)  # ids and raw scores only on request
    run(page)
    assert any(f"Similarity **1.00** · #{catalog_photo.stem}" in c.value for c in page.caption)


def test_sliders_search_the_part_of_the_photo_they_frame(page: AppTest, sample_catalog: Path) -> None:
    left, right = sorted((sample_catalog / "images").glob("*.jpg"))[5:7]
    page.sidebar.file_uploader(key="upload").upload("two.jpg", side_by_side(left, right), "image/jpeg")
    run(page)
    assert page.session_state["query"].isolate == "auto" and page.checkbox(key="cut_out").value
    page.slider(key="crop_across").set_value((50, 100))
    run(page)
    assert page.session_state["query"].crop == (0.5, 0.0, 1.0, 1.0) and result_ids(page)[0] == right.stem
    page.slider(key="crop_across").set_value((0, 50))
    run(page)
    assert result_ids(page)[0] == left.stem
    page.slider(key="crop_across").set_value((40, 40))  # nothing framed: a message, the last results stay
    run(page)
    assert "couldn't search that part" in page.error[0].value and result_ids(page)[0] == left.stem
    page.slider(key="crop_across").set_value((50, 100))
    page.checkbox(key="cut_out").uncheck()  # ticked by default: the photo's garment is cut out (`auto`)
    run(page)
    assert not page.session_state["query"].cut_out and page.session_state["query"].isolate == "none"
    page.checkbox(key="cut_out").check()
    run(page)
    assert page.session_state["query"].isolate == "auto" and not page.error and len(result_ids(page)) == 5


def test_camera_photo_is_a_query_like_an_upload(page: AppTest, catalog_photo: Path) -> None:
    choose_mode(page, "camera")
    page.sidebar.camera_input(key="camera").upload("shot.jpg", catalog_photo.read_bytes())
    run(page)
    assert page.session_state["query"].title == "Your photo"
    assert result_ids(page)[0] == catalog_photo.stem


def test_random_product_never_finds_itself(page: AppTest, index: Path) -> None:
    choose_mode(page, "random")
    for _ in range(3):
        page.sidebar.button[0].click()
        run(page)
        ids = result_ids(page)
        assert len(ids) == 5 and query_id(page) not in ids
    names = Recommender.open(index).item(query_id(page)).metadata["productDisplayName"]
    assert page.subheader[0].value == names


def test_catalog_product_by_id_and_by_words(page: AppTest, index: Path, catalog_photo: Path) -> None:
    choose_mode(page, "catalog")
    page.sidebar.text_input(key="product_text").input(catalog_photo.stem)
    run(page)
    assert query_id(page) == catalog_photo.stem and catalog_photo.stem not in result_ids(page)

    page.sidebar.text_input(key="product_text").input("men shirt")
    run(page)
    assert page.session_state["query"].text == "men shirt" and page.subheader[0].value == "“men shirt”"
    expected = [m.id for m in Recommender.open(index).similar_to_text("men shirt", 5)]
    assert len(expected) == 5 and result_ids(page) == expected  # as product cards, like every search

    page.sidebar.text_input(key="product_text").input("zzqx wvyk")
    run(page)
    assert result_ids(page) == [] and "No product matches these words" in page.info[0].value
    page.button(key="back").click()
    run(page)
    assert page.session_state["query"].text == "men shirt"


def test_filters_and_k_apply_inside_the_search(page: AppTest, index: Path, catalog_photo: Path) -> None:
    recommender = Recommender.open(index)
    query = recommender.item(catalog_photo.stem)
    other_gender = next(g for g in ("Men", "Women") if g != query.metadata["gender"])
    choose_mode(page, "catalog")
    page.sidebar.text_input(key="product_text").input(query.id)
    page.sidebar.slider(key="k").set_value(8)
    page.multiselect(key="filter-gender").select(other_gender)
    page.multiselect(key="filter-masterCategory").select("Apparel")
    run(page)
    ids = result_ids(page)
    assert len(ids) == 8
    for item_id in ids:
        metadata = recommender.item(item_id).metadata
        assert (metadata["gender"], metadata["masterCategory"]) == (other_gender, "Apparel")
    assert ids == [
        m.id for m in recommender.similar_to_item(query.id, 8, {"gender": other_gender, "masterCategory": "Apparel"})
    ]

    chosen = {"gender": other_gender, "masterCategory": "Apparel"}
    types = page.multiselect(key="filter-articleType").options
    assert "Tshirts" in types and "Watches" not in types  # the choices left by the other filters
    assert types == recommender.column_values("articleType", chosen)
    page.multiselect(key="filter-articleType").select("Tshirts")
    run(page)
    assert page.multiselect(key="filter-masterCategory").options == ["Apparel"]  # only apparel holds T-shirts
    assert page.multiselect(key="filter-gender").value == [other_gender]  # narrowing keeps what was chosen
    assert all(recommender.item(i).metadata["articleType"] == "Tshirts" for i in result_ids(page))


def test_more_like_this_then_back(page: AppTest) -> None:
    choose_mode(page, "random")
    page.sidebar.button[0].click()
    run(page)
    first, first_results = query_id(page), result_ids(page)
    assert page.button(key="back").disabled

    clicked = first_results[2]
    page.button(key=f"result-{clicked}").click()
    run(page)
    assert query_id(page) == clicked and clicked not in result_ids(page) and result_ids(page) != first_results

    page.button(key="back").click()
    run(page)
    assert query_id(page) == first and result_ids(page) == first_results
    assert page.button(key="back").disabled


def huge_png() -> bytes:
    """A small file that decodes to 60 megapixels: refused from its header, before decoding."""
    out = io.BytesIO()
    Image.new("1", (10_000, 6_000)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("notes.png", lambda photo: b"these are my notes, not a photo", "not an image"),
        ("cut.jpg", lambda photo: photo[: len(photo) // 2], "truncated"),
        ("empty.webp", lambda photo: b"", "empty file"),
        ("huge.png", lambda photo: huge_png(), "image too large"),
    ],
)
def test_bad_upload_is_a_message_not_a_traceback(
    page: AppTest, catalog_photo: Path, name: str, make, reason: str
) -> None:
    page.sidebar.file_uploader(key="upload").upload("good.jpg", catalog_photo.read_bytes(), "image/jpeg")
    run(page)
    results = result_ids(page)
    page.sidebar.file_uploader(key="upload").clear().upload(name, make(catalog_photo.read_bytes()))
    run(page)  # no exception in the page
    [error] = page.error
    assert name in error.value and reason in error.value
    assert result_ids(page) == results  # the last good query stays


def test_explore_page(index: Path) -> None:
    explore = run(AppTest.from_string("from fashionrec.app.explore_page import render\nrender()", default_timeout=120))
    assert explore.title[0].value == "Explore the catalog"
    assert explore.metric[0].value == "300"
    assert len(explore.get("plotly_chart")) == 3  # product types, colours, the embedding map
    assert len(explore.image) == 1  # the word cloud
    assert [s.value for s in explore.subheader] == ["What the products are called", "The map of the catalog"]


def test_explore_map_is_written_at_index_time_and_used(
    built_index: tuple[Path, BuildReport], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = copy_index(built_index[0], tmp_path / "idx")
    lines: list[str] = []
    path = write_map(index, log=lines.append)
    stored = read_map(index)
    assert path == index / MAP_FILE and stored is not None and lines
    assert len(stored["ids"]) == len(stored["x"]) == 300 and stored["generation"] == IndexStore.open(index).generation()
    assert len(set(zip(stored["x"], stored["y"], strict=True))) > 250  # spread out, not a heap
    written = path.stat().st_mtime_ns
    assert write_map(index, log=lines.append) == path and path.stat().st_mtime_ns == written  # unchanged: kept

    ids = [*stored["ids"][:7], "gone-since"]
    few = {"generation": stored["generation"], "ids": ids, "x": [*range(8)], "y": [0] * 8}
    path.write_text(json.dumps(few))  # the page draws what the file holds, without products no longer indexed
    monkeypatch.setattr(sys, "argv", [str(APP), str(index)])
    explore = run(AppTest.from_string("from fashionrec.app.explore_page import render\nrender()", default_timeout=60))
    assert any("7 of them" in c.value for c in explore.caption)
    path.write_text("{not json")  # damaged: computed again, as without the file
    frame = embedding_map.__wrapped__(str(index))
    assert len(frame) == 300 and set(frame["id"]) == set(stored["ids"])


def test_a_shared_url_restores_the_query_and_follows_it(index: Path) -> None:
    recommender = Recommender.open(index)
    item = recommender.items[0].id
    gender = recommender.item(item).metadata["gender"]
    page = AppTest.from_file(str(APP), default_timeout=60)
    page.query_params.update({"item": item, "k": "3", "colour": "0.3", "filter": [f"gender={gender.lower()}"]})
    run(page)
    assert query_id(page) == item and page.sidebar.slider(key="k").value == 3
    assert page.sidebar.slider(key="colour_weight").value == 0.3 and not page.error
    assert page.multiselect(key="filter-gender").value == [gender]  # as the index spells it
    expected = recommender.similar_to_item(item, 3, {"gender": gender}, colour_weight=0.3)
    assert result_ids(page) == [m.id for m in expected]
    assert page.query_params == {"item": item, "k": "3", "colour": "0.3", "filter": f"gender={gender}"}

    page.button(key=f"result-{expected[0].id}").click()  # "More like this": the address follows
    run(page)
    assert page.query_params["item"] == expected[0].id
    page.sidebar.toggle(key="details").set_value(True)
    run(page)
    assert page.query_params["details"] == "1"


def test_a_shared_url_of_words(index: Path) -> None:
    page = AppTest.from_file(str(APP), default_timeout=60)
    page.query_params.update({"q": "black watch", "k": "4"})
    run(page)
    assert page.session_state["query"].text == "black watch" and not page.error
    assert result_ids(page) == [m.id for m in Recommender.open(index).similar_to_text("black watch", 4)]
    assert page.query_params == {"q": "black watch", "k": "4"}
    page = AppTest.from_file(str(APP), default_timeout=60)
    page.query_params.update({"q": "x" * 10_000})
    run(page)
    assert "search words are too long" in page.error[0].value and page.session_state["query"] is None


def test_a_broken_url_is_a_message(index: Path) -> None:
    page = AppTest.from_file(str(APP), default_timeout=60)
    page.query_params.update({"item": "no-such-item", "k": "99", "filter": ["gender=Robot"]})
    run(page)
    [error] = page.error
    for words in ("item 'no-such-item' is not in this catalog", "k='99'", "no item has gender='Robot'"):
        assert words in error.value
    assert page.title[0].value == "Find your look-alike"  # the start page, usable
