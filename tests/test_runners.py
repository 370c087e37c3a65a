"""Build runners: the local and the Ray runner store the same index, resume after a kill, and rebuild incrementally."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fashionrec.build import BuildReport, build_index, plan_build
from fashionrec.catalog import load_catalog
from fashionrec.encoders import Encoder
from fashionrec.index import IndexStore

from conftest import TEST_RUNNER, damage_images, sample_rows, write_catalog


def vectors_by_id(index: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every stored item's (vector, colour vector)."""
    return {
        item.id: (vector, colour)
        for items, vectors, colours in IndexStore.open(index).load()
        for item, vector, colour in zip(items, vectors, colours, strict=True)
    }


def test_runners_are_chosen_by_name_with_clear_errors(tmp_path: Path, sample_catalog: Path, encoder: Encoder) -> None:
    catalog = load_catalog(sample_catalog)
    with pytest.raises(ValueError, match="unknown runner 'spark'; choose from local, ray"):
        build_index(catalog, tmp_path / "idx", encoder, runner="spark", progress=False)
    with pytest.raises(ValueError, match="a Ray address needs the ray runner"):
        build_index(catalog, tmp_path / "idx", encoder, ray_address="auto", progress=False)
    assert not (tmp_path / "idx").exists()  # refused before anything was written


def test_the_plan_sorts_items_by_content_hash(tmp_path: Path, encoder: Encoder) -> None:
    header, rows = sample_rows(8, seed=31)
    folder = write_catalog(tmp_path / "catalog", header, rows[:6])
    index = tmp_path / "idx"
    build_index(load_catalog(folder), index, encoder, workers=0, progress=False)
    write_catalog(folder, header, rows[1:8])  # rows[0] left, rows[6:8] are new
    images = folder / "images"
    shutil.copy(images / f"{rows[3][0]}.jpg", images / f"{rows[2][0]}.jpg")
    (images / f"{rows[4][0]}.jpg").write_bytes(b"")  # still readable: its decoder will refuse it
    (images / f"{rows[5][0]}.jpg").unlink()  # the catalog skips it: "image ... not found"
    plan = plan_build(load_catalog(folder), IndexStore.open(index).hashes())
    assert sorted(e.item.id for e in plan.new) == sorted([rows[6][0], rows[7][0]])
    assert sorted(e.item.id for e in plan.changed) == sorted([rows[2][0], rows[4][0]])
    assert [item.id for item in plan.unchanged] == [rows[1][0], rows[3][0]]
    assert sorted(plan.removed) == sorted([rows[0][0], rows[5][0]])  # left the catalog; an image gone too
    assert plan.problems == []


def test_the_manifest_records_the_runner(built_index: tuple[Path, BuildReport]) -> None:
    manifest = json.loads((built_index[0] / "manifest.json").read_text())
    recorded = {"runner": "local", "workers": 2}
    if TEST_RUNNER == "ray":
        recorded = {"runner": "ray", "address": None, "actors": 2}
    assert manifest["build"] == recorded
    assert built_index[1].runner == TEST_RUNNER


@pytest.mark.ray
@pytest.mark.slow
def test_ray_and_local_builds_store_the_same_index(
    ray_instance: None, built_index: tuple[Path, BuildReport], sample_catalog: Path, encoder: Encoder, tmp_path: Path
) -> None:
    report = build_index(load_catalog(sample_catalog), tmp_path / "idx", encoder, runner="ray", progress=False)
    assert (report.embedded, report.total, report.problems, report.runner) == (300, 300, [], "ray")
    local, ray = vectors_by_id(built_index[0]), vectors_by_id(tmp_path / "idx")
    assert sorted(ray) == sorted(local)
    cosines = np.array([float(ray[i][0] @ local[i][0]) for i in local])
    assert cosines.min() > 0.999
    assert all(np.allclose(ray[i][1], local[i][1], atol=1e-6) for i in local)  # same decoding, same colours
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["build"]["runner"] == "ray"


@pytest.mark.ray
@pytest.mark.slow
def test_bad_images_are_problems_of_their_own_items_on_ray(
    ray_instance: None, tmp_path: Path, encoder: Encoder
) -> None:
    header, rows = sample_rows(10, seed=32)
    folder = write_catalog(tmp_path / "catalog", header, rows)
    images = folder / "images"
    damage_images(images, rows)
    ray = build_index(load_catalog(folder), tmp_path / "ray", encoder, runner="ray", progress=False)
    local = build_index(load_catalog(folder), tmp_path / "local", encoder, workers=0, progress=False)
    assert ray.total == local.total == 6
    by_item = {p.item: p.message for p in ray.problems}
    assert by_item == {p.item: p.message for p in local.problems}  # the same problem, word for word
    assert "empty file" in by_item[rows[1][0]] and "corrupt or truncated" in by_item[rows[2][0]]
    assert "not an image" in by_item[rows[3][0]] and "not found" in by_item[rows[4][0]]


@pytest.mark.ray
@pytest.mark.slow
def test_an_incremental_ray_rebuild_embeds_only_what_changed(
    ray_instance: None, tmp_path: Path, encoder: Encoder
) -> None:
    header, rows = sample_rows(30, seed=33)
    folder = write_catalog(tmp_path / "catalog", header, rows[:20])
    index = tmp_path / "idx"
    assert build_index(load_catalog(folder), index, encoder, runner="ray", progress=False).embedded == 20
    write_catalog(folder, header, rows[3:30])  # 3 removed, 10 new
    images = folder / "images"
    shutil.copy(images / f"{rows[15][0]}.jpg", images / f"{rows[8][0]}.jpg")  # one image changed
    second = build_index(load_catalog(folder), index, encoder, runner="ray", progress=False)
    assert (second.embedded, second.removed, second.unchanged, second.total) == (11, 3, 16, 27)
    stored = vectors_by_id(index)
    assert float(stored[rows[8][0]][0] @ stored[rows[15][0]][0]) > 0.999  # the changed image was embedded again
