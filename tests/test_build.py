"""Building an index: real images, bad files, resume after a kill, incremental updates.

With FASHIONREC_TEST_RUNNER=ray every build here, the CLI's included, runs on a local Ray (`make test` does both).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fashionrec.build import BuildReport, build_index
from fashionrec.catalog import load_catalog
from fashionrec.encoders import Encoder, load_encoder
from fashionrec.index import FORMAT_VERSION, IndexStore, IndexStoreError
from fashionrec.search import Recommender

from conftest import TEST_RUNNER, damage_images, sample_rows, write_catalog

pytestmark = pytest.mark.usefixtures("ray_if_chosen")


def stored_count(index: Path) -> int:
    try:
        with sqlite3.connect(index / "index.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def build(folder: Path, index: Path, encoder: Encoder) -> BuildReport:
    """A build of the catalog in `folder` on the runner under test (its default workers or actors)."""
    return build_index(load_catalog(folder), index, encoder, workers=0, progress=False, runner=TEST_RUNNER)


def test_builds_a_complete_self_describing_index(built_index: tuple[Path, BuildReport], sample_catalog: Path) -> None:
    index, report = built_index
    assert report.embedded == report.total == 300 and report.problems == []
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["complete"] is True
    assert manifest["encoder"]["id"].startswith("efficientnet-lite0@") and manifest["encoder"]["dim"] == 1280
    assert manifest["counts"]["items"] == 300
    assert manifest["catalog"]["path"] == str(sample_catalog)
    assert manifest["build"]["runner"] == report.runner == TEST_RUNNER
    assert not list(index.glob("*.pkl")) and not list(index.glob("*.pickle"))


def test_every_catalog_image_finds_itself_first(built_index: tuple[Path, BuildReport], sample_catalog: Path) -> None:
    recommender = Recommender.open(built_index[0])
    for item in recommender.items[::15]:
        (best, *others) = recommender.similar_to_image(sample_catalog / item.image, k=3)
        assert best.score > 0.999
        tied = {best.id, *best.variants} | {m.id for m in others if m.score > best.score - 1e-4}  # the same photo
        assert item.id in tied, (item.id, best)


def test_bad_files_are_reported_per_item_and_the_rest_is_indexed(tmp_path: Path, encoder: Encoder) -> None:
    header, rows = sample_rows(12, seed=4)
    folder = write_catalog(tmp_path / "catalog", header, rows)
    images = folder / "images"
    damage_images(images, rows)
    with open(folder / "styles.csv", "a", newline="") as file:
        csv.writer(file).writerows([rows[5], rows[6][:3]])  # a duplicate id and a short row
    report = build(folder, tmp_path / "idx", encoder)
    assert report.total == 8
    by_item = {p.item: p.message for p in report.problems}
    assert "empty file" in by_item[rows[1][0]]
    assert "corrupt or truncated" in by_item[rows[2][0]]
    assert "not an image" in by_item[rows[3][0]]
    assert "not found" in by_item[rows[4][0]]
    assert "duplicate id" in by_item[rows[5][0]]
    assert "3 fields, expected 10" in by_item["line 15"]
    stored = {p.item: p.message for p in Recommender.open(tmp_path / "idx").problems()}
    assert stored == by_item  # kept in the index for `info`


def test_incremental_rebuild_embeds_only_what_changed(tmp_path: Path, encoder: Encoder) -> None:
    header, rows = sample_rows(40, seed=5)
    folder = write_catalog(tmp_path / "catalog", header, rows[:30])
    first = build(folder, tmp_path / "idx", encoder)
    assert first.embedded == 30

    renamed = [*rows[6][:9], "Renamed Product"]  # metadata changed, image not
    write_catalog(folder, header, [*rows[5:6], renamed, *rows[7:40]])  # 5 removed, 10 new
    images = folder / "images"
    shutil.copy(images / f"{rows[20][0]}.jpg", images / f"{rows[10][0]}.jpg")  # one image changed
    second = build(folder, tmp_path / "idx", encoder)
    assert (second.embedded, second.removed, second.unchanged, second.total) == (11, 5, 24, 35)
    recommender = Recommender.open(tmp_path / "idx")
    assert recommender.item(rows[6][0]).metadata["productDisplayName"] == "Renamed Product"
    (best,) = recommender.similar_to_item(rows[20][0], k=1, collapse=False)  # a copy: collapsed by default
    assert best.id == rows[10][0] and best.score > 0.999  # the changed image was embedded again

    third = build(folder, tmp_path / "idx", encoder)
    assert (third.embedded, third.unchanged) == (0, 35)


def index_command(folder: Path, index: Path, log: Path) -> subprocess.Popen:
    """`fashionrec index` on the runner under test, in its own session, its output in a file: a pipe nobody
    reads while it runs could fill up (with Ray's logs) and stall the build.

    Ctrl-C gets its default meaning back in the child: a shell that runs the tests in the background (`&`)
    ignores SIGINT, every child inherits that, and the build would run to its end.
    """
    command = ["index", str(folder), "--out", str(index), "--runner", TEST_RUNNER]
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fashionrec.cli", *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_an_interrupted_build_resumes_without_re_embedding(tmp_path: Path, stop: signal.Signals) -> None:
    header, rows = sample_rows(700, seed=6)
    folder = write_catalog(tmp_path / "catalog", header, rows)
    index, log = tmp_path / "idx", tmp_path / "build.log"
    process = index_command(folder, index, log)
    deadline = time.monotonic() + 300
    while stored_count(index) == 0 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, stop)  # the CLI and everything it started (workers, a local Ray), at once
    process.wait(timeout=60)
    before = stored_count(index)
    assert 0 < before < 700, f"the build must be stopped part-way; its output:\n{log.read_text()[-3000:]}"
    if stop == signal.SIGINT:
        assert process.returncode == 130 and "run the same command to resume" in log.read_text(), log.read_text()
    report = build(folder, index, load_encoder())
    assert report.unchanged == before and report.embedded == 700 - before and report.total == 700


def test_an_index_never_mixes_encoders(built_index: tuple[Path, BuildReport], sample_catalog: Path) -> None:
    other = load_encoder(size=224)
    with pytest.raises(IndexStoreError, match="was built with encoder efficientnet-lite0@.*/pad160"):
        build_index(load_catalog(sample_catalog), built_index[0], other, progress=False, runner=TEST_RUNNER)


def test_unreadable_indexes_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(IndexStoreError, match="not a fashionrec index"):
        IndexStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(IndexStoreError, match="index format 99"):
        IndexStore.open(tmp_path)
