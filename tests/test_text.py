"""Search by words over the real 300-product index: BM25 (name words, misspelt words, stems), rank fusion,
and the text bridge (trained on the index, saved without pickle, refused for another encoder's index),
through the library, the CLI and a real API server."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_api import assert_error, serve

from fashionrec.bridge import BRIDGE_MANIFEST, BRIDGE_WEIGHTS, BridgeError, TextBridge
from fashionrec.build import BuildReport
from fashionrec.quality.config import BridgeConfig
from fashionrec.quality.train_text import split, train_bridge
from fashionrec.search import Recommender, fuse
from fashionrec.terms import Term
from fashionrec.text import MAX_QUERY_CHARS, NAME, TextIndex, stems, words

from conftest import copy_index, run_cli

TINY = BridgeConfig(epochs=3, batch_size=64)


@pytest.fixture(scope="module")
def recommender(built_index: tuple[Path, BuildReport]) -> Recommender:
    return Recommender.open(built_index[0])


def names(recommender: Recommender) -> list[str]:
    return [item.metadata[NAME] for item in recommender.items]


def rare_word(recommender: Recommender, length: int = 6) -> str:
    """A word of at least `length` letters that only one or two names of the index hold (a brand, a model)."""
    counts = Counter(w for name in names(recommender) for w in set(re.findall(r"[a-z]+", name.lower())))
    return sorted(w for w, n in counts.items() if n <= 2 and len(w) >= length and w.isalpha())[0]


def holders(recommender: Recommender, word: str) -> set[str]:
    return {i.id for i in recommender.items if word in re.findall(r"[a-z]+", i.metadata[NAME].lower())}


def test_words_split_hyphens_and_drop_stop_words() -> None:
    assert words("Men's T-shirt for the beach") == ["men", "t", "shirt", "tshirt", "beach"]
    assert stems("Jackets running shoes") == ["jacket", "run", "shoe"]


def test_an_index_without_words_finds_nothing() -> None:
    for texts in ([], [""], ["", "  "]):
        np.testing.assert_array_equal(TextIndex(texts).scores("red shirt"), np.zeros(len(texts)))


def test_bm25_finds_a_name_word_first(recommender: Recommender) -> None:
    word = rare_word(recommender)
    found = recommender.similar_to_text(word, k=5, mode="words", collapse=False)
    assert found and {m.id for m in found[: len(holders(recommender, word))]} == holders(recommender, word)
    assert all(m.score > 0 for m in found)


def test_bm25_finds_a_misspelt_word(recommender: Recommender) -> None:
    word = rare_word(recommender, length=7)
    misspelt = word[:3] + word[4] + word[3] + word[5:]  # two letters swapped: "jacket" -> "jakcet"
    assert misspelt not in words(" ".join(names(recommender)))
    found = recommender.similar_to_text(misspelt, k=3, mode="words", collapse=False)
    assert found and found[0].id in holders(recommender, word)


def test_bm25_matches_word_forms_by_stem(recommender: Recommender) -> None:
    index = TextIndex.of([item.metadata for item in recommender.items])
    singular = index.scores("shirt")
    assert singular.max() > 0
    np.testing.assert_array_equal(index.scores("shirts"), singular)
    with_shirts = {i.id for i in recommender.items if "shirts" in i.metadata[NAME].lower().split()}
    found = {m.id for m in recommender.similar_to_text("shirt", k=100, mode="words", collapse=False)}
    assert with_shirts and with_shirts <= found  # the plural in a name is found by the singular


def test_words_that_no_product_uses_find_nothing(recommender: Recommender) -> None:
    assert recommender.similar_to_text("qqqq zzzz", mode="words") == []
    assert recommender.similar_to_text("qqqq zzzz") == []  # no bridge: fused is words only
    assert "words only" in recommender.info()["text_search"]


def test_text_search_applies_filters_and_k(recommender: Recommender) -> None:
    found = recommender.similar_to_text("black", k=7, filters={"gender": "Women"}, mode="words")
    assert 0 < len(found) <= 7 and all(m.metadata["gender"] == "Women" for m in found)
    assert [m.rank for m in found] == list(range(1, len(found) + 1))


@pytest.mark.parametrize("text", ["", "   ", "x" * (MAX_QUERY_CHARS + 1), "x" * 10_000])
def test_bad_text_is_a_clear_error(recommender: Recommender, text: str) -> None:
    with pytest.raises(ValueError, match="search text is (empty|too long)"):
        recommender.similar_to_text(text)


def test_bad_mode_and_bridge_without_one(recommender: Recommender) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        recommender.similar_to_text("shirt", mode="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no text bridge.*train-text"):
        recommender.similar_to_text("shirt", mode="bridge")


def test_fusion_blends_scaled_scores() -> None:
    by_words = [(8.0, 1), (4.0, 2), (4.0, 3), (2.0, 4)]
    by_look = [(0.5, 3), (0.4, 5), (0.3, 1)]
    fused = {p: s for s, p in fuse(by_words, by_look, words_weight=0.75)}
    assert fused[1] == pytest.approx(0.75) and fused[2] == pytest.approx(0.375) and fused[4] == pytest.approx(0.1875)
    assert fused[3] == pytest.approx(0.375 + 0.25) and fused[5] == pytest.approx(0.125)  # look: (0.4 - 0.3) / 0.2
    assert fuse(by_words, [], 0.75) == [(0.75 * s / 8.0, p) for s, p in by_words]
    only_look = {p: s for s, p in fuse([], by_look, 0.75)}
    assert only_look == {3: pytest.approx(0.25), 5: pytest.approx(0.125), 1: 0.0}
    # 2 and 3 tie in words: the look breaks the tie; a strong word lead (1) is kept over a good look (3)
    assert sorted(fused, key=lambda p: -fused[p])[:3] == [1, 3, 2]


# ---- the text bridge -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bridged(tmp_path_factory: pytest.TempPathFactory, built_index: tuple[Path, BuildReport]) -> Path:
    """A copy of the session index with a text bridge trained in it (INDEX/text-bridge)."""
    index = copy_index(built_index[0], tmp_path_factory.mktemp("bridged") / "idx")
    train_bridge(index, config=TINY, progress=False, log=lambda _: None)
    return index


@pytest.mark.slow
def test_bridge_trains_only_on_the_training_split(bridged: Path) -> None:
    manifest = json.loads((bridged / "text-bridge" / BRIDGE_MANIFEST).read_text())
    recommender = Recommender.open(bridged)
    train_rows, validation_rows, heldout_rows = split([i.id for i in recommender.items], TINY)
    assert manifest["split"]["train_items"] == len(train_rows) and len(validation_rows) == 0
    assert manifest["split"]["heldout_items"] == len(heldout_rows) > 30  # the 20% that `train` holds out
    assert manifest["encoder_id"] == recommender.info()["encoder"] and len(manifest["history"]) == TINY.epochs
    assert 0 <= manifest["figures"]["heldout"]["R@1"] <= manifest["figures"]["heldout"]["R@10"] <= 1


@pytest.mark.slow
def test_bridge_saves_and_loads_without_pickle(bridged: Path) -> None:
    folder = bridged / "text-bridge"
    assert sorted(p.name for p in folder.iterdir()) == sorted([BRIDGE_MANIFEST, BRIDGE_WEIGHTS])
    with zipfile.ZipFile(folder / BRIDGE_WEIGHTS) as archive:  # an npz: plain .npy arrays, no pickled objects
        assert all(name.endswith(".npy") for name in archive.namelist())
    with np.load(folder / BRIDGE_WEIGHTS, allow_pickle=False) as weights:
        assert (
            weights["embedding"].dtype == np.float16
            and weights["basis"].shape[0] == Recommender.open(bridged).store.dim
        )
    recommender = Recommender.open(bridged)
    bridge = recommender.bridge
    assert bridge is not None and "text bridge" in recommender.info()["text_search"]
    again = TextBridge.load(folder, bridge.encoder_id).embed(["red tshirt for men", "jeans"])
    np.testing.assert_allclose(again, bridge.embed(["red tshirt for men", "jeans"]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(again, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_bridge_finds_products_by_look_and_fuses_with_words(bridged: Path) -> None:
    recommender = Recommender.open(bridged)
    by_look = recommender.similar_to_text("qqqq tshirt", k=5, mode="bridge")
    assert len(by_look) == 5 and all(-1 <= m.score <= 1 for m in by_look)
    word = rare_word(recommender)
    fused = recommender.similar_to_text(word, k=5)
    assert len(fused) == 5 and fused[0].id in holders(recommender, word)  # the name's own product stays first
    assert recommender.similar_to_text("qqqq zzzz", mode="words") == []
    assert len(recommender.similar_to_text("qqqq zzzz", k=3)) == 3  # the bridge still proposes looks


@pytest.mark.slow
def test_a_text_term_of_a_weighted_query_reads_the_bridge(bridged: Path) -> None:
    recommender = Recommender.open(bridged)
    vector = recommender.text_vector("black shirt")
    np.testing.assert_allclose(vector, recommender.bridge.embed(["black shirt"])[0], atol=1e-6)
    alone = recommender.similar_to_terms([Term("text", "black shirt")], k=5, colour="direction")
    assert [m.id for m in alone] == [m.id for m in recommender.similar_to_text("black shirt", k=5, mode="bridge")]
    by_words = recommender.recommend([], text="black shirt", k=5)  # the app's refined search of typed words
    assert [m.id for m in by_words] == [m.id for m in alone]
    refined = recommender.recommend([alone[0].id], text="black shirt", k=5)  # a liked result: never shown again
    assert len(refined) == 5 and alone[0].id not in {m.id for m in refined}


@pytest.mark.slow
def test_bridge_refuses_another_encoders_index_and_damaged_weights(bridged: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(bridged / "text-bridge", tmp_path / "bridge"))
    with pytest.raises(BridgeError, match="trained for encoder .* but the index uses 'trained:other"):
        TextBridge.load(folder, "trained:other@0123/pad160")
    manifest = json.loads((folder / BRIDGE_MANIFEST).read_text())
    (folder / BRIDGE_MANIFEST).write_text(json.dumps(manifest | {"encoder_id": "efficientnet-lite2@00/pad224"}))
    with pytest.raises(BridgeError, match="train-text"):
        Recommender.open(bridged, text_model=folder).similar_to_text("shirt")
    (folder / BRIDGE_MANIFEST).write_text(json.dumps(manifest))
    (folder / BRIDGE_WEIGHTS).write_bytes((folder / BRIDGE_WEIGHTS).read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BridgeError, match="do not match their manifest"):
        TextBridge.load(folder, manifest["encoder_id"])
    with pytest.raises(BridgeError, match="not a text bridge"):
        Recommender.open(bridged, text_model=tmp_path / "nowhere")


# ---- surfaces ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_search_by_text(bridged: Path) -> None:
    found = run_cli("search", str(bridged), "--text", "black shirt", "-k", "4", "--json")
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)) == 4
    words_only = run_cli("search", str(bridged), "--text", "shirt", "--text-mode", "words", "--json")
    assert all("shirt" in m["metadata"][NAME].lower() for m in json.loads(words_only.stdout))
    table = run_cli("search", str(bridged), "-t", "red tshirt for men")
    assert table.returncode == 0 and "Products for 'red tshirt for men'" in table.stdout
    for args, message in [
        (["--text", "  "], "search text is empty"),
        (["--text", "x" * 10_000], "too long"),
        ([], "give one IMAGE, or --folder PHOTOS, or --text WORDS"),
        (["--text", "shirt", "--text-mode", "magic"], "is not one of"),
    ]:
        failed = run_cli("search", str(bridged), *args)
        assert failed.returncode == 2 and message in failed.stderr and "Traceback" not in failed.stderr


@pytest.fixture(scope="module")
def api(bridged: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with serve(bridged, tmp_path_factory.mktemp("text-api") / "server.log") as client:
        yield client


@pytest.mark.slow
def test_api_search_by_text(api: httpx.Client) -> None:
    assert "text bridge" in api.get("/v1/info").json()["text_search"]
    found = api.get("/v1/search", params={"q": "blue jeans", "k": 6}).json()["results"]
    assert [m["rank"] for m in found] == [1, 2, 3, 4, 5, 6] and found[0]["image_url"].startswith("/v1/items/")
    women = api.get("/v1/search", params={"q": "black", "filter": "gender:Women", "mode": "words"}).json()["results"]
    assert women and all(m["metadata"]["gender"] == "Women" for m in women)
    assert_error(api.get("/v1/search", params={"q": ""}), 400, "q")
    assert_error(api.get("/v1/search"), 400, "q")
    assert_error(api.get("/v1/search", params={"q": "   "}), 400, "search text is empty")
    assert_error(api.get("/v1/search", params={"q": "x" * 10_000}), 400, "q")
    assert_error(api.get("/v1/search", params={"q": "shirt", "mode": "magic"}), 400, "mode")
    assert_error(api.get("/v1/search", params={"q": "shirt", "filter": "colour=Red"}), 422, "unknown filter column")
    assert_error(api.get("/v1/search", params={"q": "shirt", "k": 0}), 400, "k")
