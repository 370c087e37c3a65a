"""`fashionrec eval`: leave-one-out figures checked against a brute-force count, and its pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionrec.build import BuildReport
from fashionrec.evaluate import evaluate
from fashionrec.search import Recommender

from conftest import run_cli


@pytest.fixture(scope="module")
def recommender(built_index: tuple[Path, BuildReport]) -> Recommender:
    return Recommender.open(built_index[0])


def test_precision_matches_a_brute_force_count(recommender: Recommender) -> None:
    report = evaluate(recommender, ["articleType", "baseColour"], [1, 5], progress=False)
    labels = recommender.metadata["articleType"].to_numpy()
    vectors = recommender.store.vectors([item.id for item in recommender.items])
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    top5 = np.argsort(-similarity, axis=1, kind="stable")[:, :5]
    expected = (labels[top5] == labels[:, None]).mean()
    figures = report["labels"]["articleType"]
    assert figures["P@5"] == pytest.approx(expected, abs=0.01)
    assert 0.3 < figures["P@5"] <= 1.0 and figures["P@1"] >= figures["P@5"] - 0.2
    combined = report["labels"]["articleType+baseColour"]
    assert combined["P@5"] <= min(figures["P@5"], report["labels"]["baseColour"]["P@5"])
    assert all(size >= 0 for size in figures["per_class_P@5"].values())
    counted = set(figures["per_class_P@5"])
    assert counted.isdisjoint(figures["small_classes"])
    assert all((labels == c).sum() >= 20 for c in counted)


def test_query_subset_and_unknown_ids(recommender: Recommender) -> None:
    ids = [item.id for item in recommender.items[:30]]
    report = evaluate(recommender, ["gender"], [5], queries=ids, progress=False)
    assert report["labels"]["gender"]["queries"] == 30
    with pytest.raises(ValueError, match="not in the index"):
        evaluate(recommender, ["gender"], [5], queries=["nope"], progress=False)
    with pytest.raises(ValueError, match="unknown label column"):
        evaluate(recommender, ["colour"], [5], progress=False)


@pytest.mark.slow
def test_cli_writes_report_and_pictures(tmp_path: Path, built_index: tuple[Path, BuildReport]) -> None:
    result = run_cli(
        "eval",
        str(built_index[0]),
        "--label",
        "articleType",
        "--label",
        "baseColour",
        "--k",
        "1",
        "--k",
        "5",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "articleType+baseColour" in result.stdout and "macro P@5" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ks"] == [1, 5] and report["items"] == 300
    for picture in ("per_class_p5_articleType.png", "confusions_baseColour.png", "samples_articleType.png"):
        with Image.open(tmp_path / picture) as image:
            assert image.width > 300 and image.height > 200
