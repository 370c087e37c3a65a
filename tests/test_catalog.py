"""Catalog sources: the shared Kaggle zip in place, Kaggle quirks, generic CSV/Parquet tables."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fashionrec.catalog import CatalogError, load_catalog

from conftest import SHARED_ZIP, sample_rows, write_catalog

MISSING_IN_ZIP = {"12347", "39401", "39403", "39410", "39425"}


def test_reads_the_whole_kaggle_zip_in_place() -> None:
    catalog = load_catalog(SHARED_ZIP)
    assert len(catalog.items) == 44441
    assert {p.item for p in catalog.problems} == MISSING_IN_ZIP
    assert all("not found" in p.message and p.action == "skipped" for p in catalog.problems)
    first = catalog.items[0]
    assert first.id == "15970" and first.image == "images/15970.jpg"
    assert first.metadata["productDisplayName"] == "Turtle Check Men Navy Blue Shirt"
    assert any(item.metadata["usage"] == "NA" for item in catalog.items)  # the literal, not a missing value
    assert catalog.source.read(first.image)[:2] == b"\xff\xd8"  # a JPEG, straight from the zip


def test_kaggle_quirks_are_reported_per_row(tmp_path: Path) -> None:
    header, rows = sample_rows(6, seed=1)
    folder = write_catalog(tmp_path, header, rows)
    comma_row = [*rows[0][:9], "Nike Men", " Blue Shirt"]  # unquoted comma: 11 fields
    lines = [
        header,
        comma_row,
        rows[1],
        rows[1][:5],  # too few fields
        rows[2],
        [rows[2][0], *rows[3][1:]],  # duplicate id
        ["", *rows[3][1:]],  # empty id
        ["99999999", *rows[4][1:]],  # no image
    ]
    with open(folder / "styles.csv", "w", newline="") as file:
        csv.writer(file, quoting=csv.QUOTE_NONE, escapechar="\\").writerows(lines)
    catalog = load_catalog(folder)
    assert [item.id for item in catalog.items] == [rows[0][0], rows[1][0], rows[2][0]]
    assert catalog.items[0].metadata["productDisplayName"] == "Nike Men, Blue Shirt"
    messages = {p.item: (p.message, p.action) for p in catalog.problems}
    assert messages[rows[0][0]][1] == "repaired" and "extra field" in messages[rows[0][0]][0]
    assert messages[rows[2][0]] == ("duplicate id (line 6); the first row is kept", "skipped")
    assert "5 fields, expected 10" in messages["line 4"][0]
    assert messages["line 7"][0] == "empty id"
    assert "not found" in messages["99999999"][0]


def test_generic_csv_and_parquet_with_configurable_columns(tmp_path: Path) -> None:
    header, rows = sample_rows(4, seed=2)
    source = write_catalog(tmp_path / "kaggle", header, rows)
    (tmp_path / "shop" / "pics").mkdir(parents=True)
    records = []
    for row in rows:
        shutil.copy(source / "images" / f"{row[0]}.jpg", tmp_path / "shop" / "pics" / f"p{row[0]}.jpg")
        records.append({"sku": f"SKU-{row[0]}", "picture": f"pics/p{row[0]}.jpg", "title": row[9], "price": "9.90"})
    records.append({"sku": "SKU-escape", "picture": "../kaggle/styles.csv", "title": "x", "price": "1"})
    frame = pd.DataFrame(records)
    frame.to_csv(tmp_path / "shop" / "products.csv", index=False)
    frame.to_parquet(tmp_path / "shop" / "products.parquet")
    for table in ("products.csv", "products.parquet"):
        catalog = load_catalog(tmp_path / "shop" / table, id_column="sku", image_column="picture")
        assert [item.id for item in catalog.items] == [f"SKU-{row[0]}" for row in rows]
        assert catalog.items[0].metadata == {"picture": f"pics/p{rows[0][0]}.jpg", "title": rows[0][9], "price": "9.90"}
        assert [p.item for p in catalog.problems] == ["SKU-escape"]  # cannot reach outside the folder


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("nothing-here", None, "no such file or folder"),
        (".", None, "no styles.csv"),
        ("notes.txt", "hi", "not a folder, zip, CSV or Parquet"),
        ("empty.csv", "", "CSV file is empty"),
        ("t.csv", "sku,name\n1,a\n", "no id column 'id'"),
    ],
)
def test_unusable_catalogs_give_a_clear_error(tmp_path: Path, name: str, content: str | None, expected: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(CatalogError, match=expected) as raised:
        load_catalog(path)
    assert str(path.resolve()) in str(raised.value)
