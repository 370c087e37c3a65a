"""The command line, run as a user runs it: a real process, real files, exit codes and output."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from fashionrec.build import BuildReport
from fashionrec.explore import read_map
from fashionrec.search import Recommender

from conftest import run_cli as run


def test_index_search_similar_info(tmp_path: Path, sample_catalog: Path, built_index: tuple[Path, BuildReport]) -> None:
    index = tmp_path / "idx"
    built = run("index", str(sample_catalog), "--out", str(index), "--workers", "2")
    assert built.returncode == 0, built.stderr
    assert "items in index" in built.stdout and "300" in built.stdout
    assert "img/s" in built.stderr  # the progress bar, with its rate
    assert read_map(index) is not None and "Mapping 300 products" in built.stdout  # the explore page's map

    first_id = next(iter(json.loads(run("info", str(index), "--json").stdout)["metadata_columns"]))
    assert first_id == "gender"
    photo = sorted((sample_catalog / "images").glob("*.jpg"))[0]
    table = run("search", str(index), str(photo), "-k", "3")
    assert table.returncode == 0, table.stderr
    assert "productDisplayName" in table.stdout and photo.stem in table.stdout

    found = json.loads(run("search", str(index), str(photo), "-k", "4", "--json").stdout)
    assert [m["rank"] for m in found] == [1, 2, 3, 4] and found[0]["id"] == photo.stem
    similar = json.loads(run("similar", str(index), photo.stem, "-k", "5", "--json").stdout)
    assert len(similar) == 5 and photo.stem not in {m["id"] for m in similar}
    gender = found[0]["metadata"]["gender"]
    filtered = json.loads(run("similar", str(index), photo.stem, "--filter", f"gender={gender}", "--json").stdout)
    assert all(m["metadata"]["gender"] == gender for m in filtered)


@pytest.mark.slow
def test_user_errors_are_one_line_with_exit_code_2(tmp_path: Path, built_index: tuple[Path, BuildReport]) -> None:
    index = str(built_index[0])
    item = Recommender.open(index).items[0].id
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    cases = [
        (("search", index, str(not_image)), f"{not_image}: not an image"),
        (("search", index, str(tmp_path / "gone.jpg")), "gone.jpg: no such file"),
        (("similar", index, "no-such-id"), "item 'no-such-id' is not in the index"),
        (("similar", index, "x", "--filter", "colour"), "filter 'colour' is not COLUMN=VALUE"),
        (("similar", index, item, "--filter", "gender=Mne"), "no item has gender='Mne'; did you mean 'Men'?"),
        (("info", str(tmp_path)), "not a fashionrec index"),
        (("app", str(tmp_path / "nothing")), "not a fashionrec index"),
        (("index", str(tmp_path / "nothing"), "--out", str(tmp_path / "i")), "no such file or folder"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def batch_folder(folder: Path, sample_catalog: Path) -> list[Path]:
    """A folder of two catalog photos (one in a subfolder), a file that is no image, and a note that is skipped."""
    photos = sorted((sample_catalog / "images").glob("*.jpg"))[:2]
    (folder / "shop").mkdir(parents=True)
    shutil.copy(photos[0], folder / photos[0].name)
    shutil.copy(photos[1], folder / "shop" / photos[1].name)
    (folder / "broken.jpg").write_text("not a photo")
    (folder / "notes.txt").write_text("skipped: not a photo suffix")
    return photos


def test_batch_search_of_a_folder_survives_a_bad_photo(
    tmp_path: Path, sample_catalog: Path, built_index: tuple[Path, BuildReport]
) -> None:
    photos = batch_folder(tmp_path / "photos", sample_catalog)
    out = tmp_path / "results.csv"
    result = run("search", str(built_index[0]), "--folder", str(tmp_path / "photos"), "-k", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "photo/s" in result.stderr and "3 photos searched, 1 could not be read" in result.stderr
    with open(out, newline="") as file:
        rows = list(csv.DictReader(file))
    by_photo = {(row["photo"], row["rank"]): row for row in rows}
    assert len(rows) == 5 and by_photo[(photos[0].name, "1")]["id"] == photos[0].stem
    assert by_photo[(f"shop/{photos[1].name}", "1")]["id"] == photos[1].stem
    assert by_photo[(f"shop/{photos[1].name}", "1")]["productDisplayName"]
    assert "not an image" in by_photo[("broken.jpg", "")]["error"]
    assert not list(tmp_path.glob(".results.csv*"))  # written whole, under a temporary name first


@pytest.mark.slow
def test_batch_search_as_json_and_its_mistakes(
    tmp_path: Path, sample_catalog: Path, built_index: tuple[Path, BuildReport]
) -> None:
    photos = batch_folder(tmp_path / "photos", sample_catalog)
    index, folder = str(built_index[0]), str(tmp_path / "photos")
    found = json.loads(run("search", index, "--folder", folder, "-k", "1", "--json").stdout)
    by_photo = {r["photo"]: r for r in found}
    assert sorted(by_photo) == sorted(["broken.jpg", photos[0].name, f"shop/{photos[1].name}"])
    assert "not an image" in by_photo["broken.jpg"]["error"] and by_photo["broken.jpg"]["matches"] == []
    [best] = by_photo[photos[0].name]["matches"]
    assert by_photo[photos[0].name]["error"] is None and best["id"] == photos[0].stem and best["score"] <= 1.0
    for args, words in [
        ((), "give one IMAGE, or --folder"),
        (("--folder", folder, str(photos[0])), "give one IMAGE, or --folder"),
        (("--folder", folder, "--out", str(tmp_path / "r.txt")), "a .csv or .json file"),
        (("--folder", str(tmp_path / "none")), "no such folder"),
        (("--folder", folder, "--filter", "gender=Mne"), "did you mean 'Men'"),
    ]:
        result = run("search", index, *args)
        assert result.returncode == 2 and words in result.stderr, (args, result.stderr)
