"""Weighted multi-term queries and recommend, on the small real index: library, CLI, API and app."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import test_app
from streamlit.testing.v1 import AppTest
from test_api import KEY, WRITE, index_copy, serve
from test_app import choose_mode, query_id, result_ids, run

from fashionrec.build import BuildReport, build_index
from fashionrec.catalog import load_catalog
from fashionrec.encoders import TRAINED_MANIFEST, Encoder
from fashionrec.search import Match, Recommender, UnknownItemError
from fashionrec.terms import DEFAULT_LABELS, MAX_TERMS, Term, TermError, WantedLabels, trained_labels, wanted_labels

from conftest import run_cli, sample_rows, write_catalog

index, page = test_app.index, test_app.page  # the app's fixtures: its index, passed on the command line


@pytest.fixture(scope="module")
def recommender(built_index: tuple[Path, BuildReport]) -> Recommender:
    return Recommender.open(built_index[0])


def mean_cosine(recommender: Recommender, matches: list[Match], item_id: str) -> float:
    """How close the results are, on average, to one item."""
    snapshot = recommender.snapshot
    vectors = snapshot.store.vectors([m.id for m in matches])
    return float(np.mean(vectors @ snapshot.store.vectors([item_id])[0]))


def test_parse_terms() -> None:
    assert Term.parse("item:15970") == Term("item", "15970", 1.0)
    assert Term.parse("colour:Red:0.5") == Term("colour", "Red", 0.5)
    assert Term.parse("item:123:-0.5") == Term("item", "123", -0.5)
    assert Term.parse("text:leather: not suede") == Term("text", "leather: not suede", 1.0)
    assert Term.parse("image:shots/a.jpg:2") == Term("image", Path("shots/a.jpg"), 2.0)
    for bad, problem in [("15970", "KIND:VALUE"), ("shoe:1", "unknown term kind"), ("item:1:0", "non-zero")]:
        with pytest.raises(TermError, match=problem):
            Term.parse(bad)


def test_weights_pull_the_results_toward_the_heavier_example(recommender: Recommender) -> None:
    a, b = recommender.items[0].id, recommender.items[1].id
    toward_a = recommender.similar_to_terms([Term("item", a, 1.0), Term("item", b, 0.2)], k=5)
    toward_b = recommender.similar_to_terms([Term("item", a, 0.2), Term("item", b, 1.0)], k=5)
    assert mean_cosine(recommender, toward_a, a) > mean_cosine(recommender, toward_b, a)
    assert mean_cosine(recommender, toward_b, b) > mean_cosine(recommender, toward_a, b)
    assert {a, b}.isdisjoint(m.id for m in toward_a + toward_b)  # the examples themselves never come back


def test_a_negative_term_pushes_its_look_alikes_down(recommender: Recommender) -> None:
    query = recommender.items[5].id
    away = recommender.similar_to_item(query, k=1)[0].id  # the closest product: what "not like this" refuses
    plain = recommender.similar_to_terms([Term("item", query)], k=5)
    avoiding = recommender.similar_to_terms([Term("item", query), Term("item", away, -0.5)], k=5)
    assert mean_cosine(recommender, avoiding, away) < mean_cosine(recommender, plain, away)


def test_a_colour_term_moves_results_toward_that_colour(recommender: Recommender) -> None:
    queries = [item.id for item in recommender.items if item.metadata.get("baseColour") not in ("Black", "")][:30]

    def black(terms: list[list[Term]], colour: str) -> int:
        found = [m for query in terms for m in recommender.similar_to_terms(query, k=5, colour=colour)]
        return sum(m.metadata.get("baseColour") == "Black" for m in found)

    plain = black([[Term("item", q)] for q in queries], "direction")
    for strategy in ("direction", "rerank"):
        assert black([[Term("item", q), Term("colour", "black")] for q in queries], strategy) > plain + 10
    labelled = [[Term("item", q), Term("colour", "Black", 0.5)] for q in queries]
    assert black(labelled, "label") == 5 * len(queries)  # label: only items labelled with the colour
    refused = [[Term("item", q), Term("colour", "Black", -1)] for q in queries]
    assert black(refused, "label") == 0


def test_a_colour_alone_finds_that_colour(recommender: Recommender) -> None:
    found = recommender.similar_to_terms([Term("colour", "Blue")], k=10)
    counts = Counter(m.metadata.get("baseColour") for m in found)
    assert counts.most_common(1)[0][0] == "Blue"


def test_recommend_with_liked_and_disliked_items(recommender: Recommender) -> None:
    liked = [recommender.items[10].id, recommender.items[11].id]
    disliked = recommender.similar_to_item(liked[0], k=3)[2].id
    plain = recommender.recommend(liked, k=8)
    refined = recommender.recommend(liked, [disliked], k=8)
    assert set(liked).isdisjoint(m.id for m in plain) and set(liked + [disliked]).isdisjoint(m.id for m in refined)
    assert mean_cosine(recommender, refined, disliked) < mean_cosine(recommender, plain, disliked)
    assert [m.rank for m in refined] == list(range(1, 9))
    by_shape = recommender.recommend(liked, [disliked], k=8, colour_weight=0.0)  # default: colour re-rank 0.5
    assert [m.id for m in by_shape] != [m.id for m in refined]


def test_wanted_labels_weigh_liked_against_disliked_and_asked_colours() -> None:
    columns = ["articleType", "baseColour"]
    examples = [
        ({"articleType": "Shirts", "baseColour": "Red"}, 1.0),
        ({"articleType": "Shirts", "baseColour": "Blue"}, 1.0),
        ({"articleType": "Jeans", "baseColour": "Red"}, -0.5),
        ({"articleType": "", "baseColour": "Red"}, 1.0),  # unlabelled type: counts for the colour only
    ]
    wanted = wanted_labels(examples, [], columns)
    assert wanted == WantedLabels(
        {"articleType": {"Shirts": 1.0, "Jeans": -1.0}, "baseColour": {"Red": 2 / 3 - 1, "Blue": 1 / 3}}
    )
    assert wanted.score({"articleType": "Shirts", "baseColour": "Blue"}) == pytest.approx((1 + 1 / 3) / 2)
    assert wanted.score({"articleType": "Jeans", "baseColour": "Green"}) == pytest.approx(-0.5)
    asked = wanted_labels(examples, [("Green", 1.0)], columns)  # an asked colour replaces the examples' colours
    assert asked is not None and asked.wants["baseColour"] == {"Green": 1.0}
    refused = wanted_labels(examples[:1], [("Black", -1.0)], columns)  # a refused one only adds its refusal
    assert refused is not None and refused.wants["baseColour"] == {"Red": 1.0, "Black": -1.0}
    assert wanted_labels(examples, [], ["material"]) is None  # columns the examples lack: nothing wanted
    assert wanted_labels([], [], columns) is None


def test_label_columns_are_the_trained_encoders_else_type_and_colour(tmp_path: Path) -> None:
    assert trained_labels({"name": "efficientnet-lite0"}) == DEFAULT_LABELS == ("articleType", "baseColour")
    (tmp_path / TRAINED_MANIFEST).write_text(json.dumps({"labels": ["articleType", "gender"]}))
    assert trained_labels({"model_dir": str(tmp_path)}) == ("articleType", "gender")
    assert trained_labels({"model_dir": str(tmp_path / "gone")}) == DEFAULT_LABELS


def test_the_labels_rerank_orders_the_best_candidates_by_similarity_and_agreement(recommender: Recommender) -> None:
    query = recommender.items[7]
    by_look = recommender.similar_to_terms([Term("item", query.id)], k=150, collapse=False, label_weight=0.0)
    pool = by_look[:99]  # the store's best 100 by look, the query itself left out
    reranked = recommender.similar_to_terms([Term("item", query.id)], k=10, collapse=False, label_weight=0.2)

    def agreement(match: Match) -> float:
        return sum(match.metadata.get(c) == query.metadata.get(c) for c in ("articleType", "baseColour")) / 2

    expected = sorted(pool, key=lambda m: (-round(0.8 * m.score + 0.2 * agreement(m), 5), m.id))[:10]
    assert [m.id for m in reranked] == [m.id for m in expected]
    assert [m.score for m in reranked] == pytest.approx([0.8 * m.score + 0.2 * agreement(m) for m in expected], 1e-4)
    assert [m.id for m in reranked] != [m.id for m in pool[:10]]  # the labels did change the order


def test_disliked_labels_are_steered_away_from(recommender: Recommender) -> None:
    """A disliked item of another type pushes its type down, on top of moving the query away from its look."""
    items, steered = recommender.items, 0
    for query in items[30:60]:
        other = next(
            m
            for m in recommender.similar_to_item(query.id, k=30)
            if m.metadata["articleType"] != query.metadata["articleType"]
        )
        kind = other.metadata["articleType"]
        plain = recommender.recommend([query.id], k=10)
        avoiding = recommender.recommend([query.id], [other.id], k=10)
        count = sum(m.metadata["articleType"] == kind for m in avoiding)
        assert count <= sum(m.metadata["articleType"] == kind for m in plain)
        steered += count < sum(m.metadata["articleType"] == kind for m in plain)
    assert steered >= 5


def test_a_catalog_without_the_label_columns_ranks_as_before(
    tmp_path: Path, encoder: Encoder, recommender: Recommender
) -> None:
    header, rows = sample_rows(40, seed=3)
    keep = [header.index("id"), header.index("productDisplayName")]
    folder = write_catalog(tmp_path / "catalog", [header[i] for i in keep], [[row[i] for i in keep] for row in rows])
    build_index(load_catalog(folder), tmp_path / "idx", encoder, workers=1, progress=False)
    bare = Recommender.open(tmp_path / "idx")
    a, b, c = (item.id for item in bare.items[:3])
    for terms in ([Term("item", a)], [Term("item", a), Term("item", b, 0.5), Term("item", c, -0.5)]):
        assert bare.similar_to_terms(terms, k=8) == bare.similar_to_terms(terms, k=8, label_weight=0.0)
    assert bare.recommend([a, b], [c], k=8) == bare.recommend([a, b], [c], k=8, label_weight=0.0)
    query = recommender.items[7].id  # the same with the columns, but none of them named: as before too
    unnamed = Recommender(recommender.records, labels=["material"])
    assert unnamed.recommend([query], k=8) == recommender.recommend([query], k=8, label_weight=0.0)
    assert recommender.recommend([query], k=8) != recommender.recommend([query], k=8, label_weight=0.0)


@pytest.mark.parametrize(
    ("terms", "error", "problem"),
    [
        ([Term("item", "no-such-item")], UnknownItemError, "no-such-item"),
        ([Term("item", "X"), Term("colour", "ultraviolet")], TermError, "unknown colour 'ultraviolet'.*Black"),
        ([Term("colour", "Red", -1)], TermError, "positive weight"),
        ([], TermError, "at least one term"),
        ([Term("item", "X"), Term("colour", "Red"), Term("colour", "red", -1)], TermError, "no colour to show"),
        ([Term("text", "red leather jacket")], TermError, "text term 'red leather jacket'.*no text bridge"),
    ],
)
def test_bad_terms_are_refused_clearly(
    recommender: Recommender, terms: list[Term], error: type[Exception], problem: str
) -> None:
    terms = [Term("item", recommender.items[0].id) if t.value == "X" else t for t in terms]
    with pytest.raises(error, match=problem):
        recommender.similar_to_terms(terms)


def test_limits_on_terms(recommender: Recommender) -> None:
    item = recommender.items[0].id
    with pytest.raises(TermError, match="too many terms: 1,000"):
        recommender.similar_to_terms([Term("item", item)] * 1_000)
    with pytest.raises(TermError, match="cancel out"):
        recommender.similar_to_terms([Term("item", item), Term("item", item, -1)])
    for weight in (0, float("nan"), 11):
        with pytest.raises(TermError, match="weight"):
            Term("item", item, weight)
    assert len(recommender.similar_to_terms([Term("item", item)] * MAX_TERMS, k=3)) == 3


def test_an_image_term_and_a_photo_search_agree(recommender: Recommender, catalog_photo: Path) -> None:
    by_photo = recommender.similar_to_image(catalog_photo, k=5)
    by_term = recommender.similar_to_terms([Term("image", catalog_photo)], k=5)
    assert [m.id for m in by_term] == [m.id for m in by_photo]


@pytest.mark.slow  # starts a server or CLI processes
def test_cli_search_with_terms(recommender: Recommender) -> None:
    index = str(recommender.records.directory)
    item = recommender.items[3].id
    done = run_cli("search", index, "--term", f"item:{item}", "--term", "colour:black:0.5", "--json", "-k", "4")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert len(found) == 4 and item not in {m["id"] for m in found}
    bad = run_cli("search", index, "--term", f"item:{item}", "--term", "colour:ultraviolet")
    assert bad.returncode == 2 and "unknown colour 'ultraviolet'" in bad.stderr
    liked = run_cli("search", index, "--like", item, "--unlike", recommender.items[4].id, "--json", "-k", "3")
    assert liked.returncode == 0 and len(json.loads(liked.stdout)) == 3, liked.stderr


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, built_index: tuple[Path, BuildReport]) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("terms-api")
    with serve(index_copy(built_index, folder), folder / "server.log", FASHIONREC_API_KEY=KEY) as client:
        yield client


@pytest.mark.slow  # starts a server or CLI processes
def test_api_search_terms_and_recommend(api: httpx.Client, recommender: Recommender, catalog_photo: Path) -> None:
    item = recommender.items[3].id
    body = {"terms": [{"kind": "item", "value": item}, {"kind": "colour", "value": "Black", "weight": 0.5}], "k": 4}
    answer = api.post("/v1/search/terms", json=body)
    assert answer.status_code == 200, answer.text
    expected = recommender.similar_to_terms([Term("item", item), Term("colour", "Black", 0.5)], k=4)
    assert [m["id"] for m in answer.json()["results"]] == [m.id for m in expected]
    photo = {"kind": "image", "value": base64.b64encode(catalog_photo.read_bytes()).decode()}
    assert api.post("/v1/search/terms", json={"terms": [photo], "k": 2}).status_code == 200
    liked = api.post("/v1/recommend", json={"positive": [item], "negative": [recommender.items[4].id], "k": 3})
    assert liked.status_code == 200 and len(liked.json()["results"]) == 3
    black = api.post("/v1/recommend", json={"positive": [item], "colour": "black", "k": 4})
    assert black.status_code == 200, black.text
    expected = recommender.recommend([item], k=4, colour="black")
    assert [m["id"] for m in black.json()["results"]] == [m.id for m in expected]
    assert all(m["metadata"]["baseColour"] == "Black" for m in black.json()["results"])


@pytest.mark.slow  # starts a server or CLI processes
@pytest.mark.parametrize(
    ("body", "status", "problem"),
    [
        ({"terms": [{"kind": "item", "value": "no-such-item"}]}, 404, "no-such-item"),
        ({"terms": [{"kind": "colour", "value": "ultraviolet"}]}, 400, "unknown colour"),
        ({"terms": [{"kind": "item", "value": "1", "weight": 0}]}, 400, "non-zero"),
        ({"terms": [{"kind": "item", "value": "1"}] * 1_000}, 400, "at most 32"),
        ({"terms": [{"kind": "image", "value": "not base64!"}]}, 400, "base64"),
        ({"terms": [{"kind": "image", "value": base64.b64encode(b"not an image").decode()}]}, 422, "image"),
        ({"terms": [{"kind": "text", "value": "leather"}]}, 400, "no text bridge"),
        ({"terms": [{"kind": "shoe", "value": "1"}]}, 400, "kind"),
        ({"terms": []}, 400, "at least 1"),
    ],
)
def test_api_bad_terms_are_4xx(api: httpx.Client, body: dict[str, object], status: int, problem: str) -> None:
    answer = api.post("/v1/search/terms", json=body)
    assert answer.status_code == status and problem in answer.json()["detail"], answer.text


@pytest.mark.slow  # starts a server or CLI processes
def test_api_bad_recommend_is_4xx(api: httpx.Client, recommender: Recommender) -> None:
    assert api.post("/v1/recommend", json={"positive": []}).status_code == 400
    assert api.post("/v1/recommend", json={"positive": ["no-such-item"]}).status_code == 404
    assert api.post("/v1/recommend", json={"positive": ["1"], "session": "../etc"}).status_code == 400
    ultraviolet = api.post("/v1/recommend", json={"positive": [recommender.items[0].id], "colour": "ultraviolet"})
    assert ultraviolet.status_code == 400 and "unknown colour 'ultraviolet'" in ultraviolet.json()["detail"]


@pytest.mark.slow  # starts a server or CLI processes
def test_api_session_likes_are_kept_and_used(api: httpx.Client, recommender: Recommender) -> None:
    liked, disliked = [recommender.items[20].id, recommender.items[21].id], [recommender.items[22].id]
    assert api.put("/v1/sessions/ann/likes", json={"liked": liked, "disliked": disliked}).status_code == 401
    stored = api.put("/v1/sessions/ann/likes", json={"liked": liked, "disliked": disliked}, headers=WRITE)
    assert stored.status_code == 200, stored.text
    assert api.get("/v1/sessions/ann/likes").json() == {"session": "ann", "liked": liked, "disliked": disliked}
    by_session = api.post("/v1/recommend", json={"positive": [liked[0]], "session": "ann", "k": 5}).json()["results"]
    direct = recommender.recommend(liked, disliked, k=5, colour_weight=0.5)
    assert [m["id"] for m in by_session] == [m.id for m in direct]
    unknown = api.put("/v1/sessions/ann/likes", json={"liked": ["no-such-item"]}, headers=WRITE)
    assert unknown.status_code == 404 and "no-such-item" in unknown.json()["detail"]
    assert api.put("/v1/sessions/a%2F..%2Fb/likes", json={"liked": liked}, headers=WRITE).status_code in (400, 404)
    assert api.delete("/v1/sessions/ann/likes", headers=WRITE).status_code == 204
    assert api.get("/v1/sessions/ann/likes").json()["liked"] == []


def test_app_more_and_less_like_this_refine_the_results(page: AppTest, index: Path) -> None:
    choose_mode(page, "random")
    page.sidebar.button[0].click()
    run(page)
    query, first = query_id(page), result_ids(page)

    page.button(key=f"dislike-result-{first[0]}").click()
    run(page)
    assert query_id(page) == query and first[0] not in result_ids(page) and result_ids(page) != first
    liked = result_ids(page)[1]
    page.button(key=f"like-result-{liked}").click()
    run(page)
    assert page.session_state["liked"] == [liked] and page.session_state["disliked"] == [first[0]]
    assert liked not in result_ids(page) and query_id(page) == query

    page.selectbox(key="other_colour").set_value("Black")
    run(page)
    recommender = Recommender.open(index)
    assert all(recommender.item(i).metadata["baseColour"] == "Black" for i in result_ids(page))
    page.button(key="clear").click()
    run(page)
    assert result_ids(page) == first and page.session_state["other_colour"] is None
