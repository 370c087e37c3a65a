"""The command line, run as a user runs it: a real process, real files, exit codes and output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fashionrec.build import BuildReport
from fashionrec.search import Recommender

from conftest import run_cli as run


def test_index_search_similar_info(tmp_path: Path, sample_catalog: Path, built_index: tuple[Path, BuildReport]) -> None:
    index = tmp_path / "idx"
    built = run("index", str(sample_catalog), "--out", str(index), "--workers", "2")
    assert built.returncode == 0, built.stderr
    assert "items in index" in built.stdout and "300" in built.stdout
    assert "img/s" in built.stderr  # the progress bar, with its rate

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
