"""Catalog stage: turn a catalog source (folder, zip, CSV or Parquet) into items with metadata.

A catalog is read in place: a zip is never unpacked, a folder is never copied. Problems with single
rows or images are collected per item and reported; they never make the whole catalog fail.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

KAGGLE_STYLES = "styles.csv"
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


class CatalogError(ValueError):
    """The catalog as a whole cannot be read (missing file, no id column, ...)."""


@dataclass(frozen=True)
class Item:
    """One product: its id, where its image lives inside the source, and its metadata columns."""

    id: str
    image: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class Problem:
    """Something wrong with one item or row; `action` says what was done about it."""

    item: str
    message: str
    action: str = "skipped"  # "skipped" or "repaired"

    def __str__(self) -> str:
        return f"{self.item}: {self.message} ({self.action})"


class ImageSource:
    """Reads image files by their name relative to a catalog root: a folder or a zip archive.

    Instances are cheap to pickle (they hold only a path), so worker processes can each open
    their own handle on the zip.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._zip: zipfile.ZipFile | None = None
        self._names: set[str] | None = None

    @property
    def is_zip(self) -> bool:
        return self.root.is_file()

    def __getstate__(self) -> dict[str, Path]:
        return {"root": self.root}

    def __setstate__(self, state: dict[str, Path]) -> None:
        self.__init__(state["root"])

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.root)
        return self._zip

    def names(self) -> set[str]:
        """All file names in the source (zip members, or files below the folder)."""
        if self._names is None:
            if self.is_zip:
                self._names = {n for n in self._archive().namelist() if not n.endswith("/")}
            else:
                self._names = {
                    str(Path(d, f).relative_to(self.root)).replace(os.sep, "/")
                    for d, _, files in os.walk(self.root)
                    for f in files
                }
        return self._names

    def exists(self, name: str) -> bool:
        if self.is_zip:
            return name in self.names()
        return self._path(name).is_file()

    def _path(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root):
            raise FileNotFoundError(f"{name}: outside the catalog folder")
        return path

    def read(self, name: str) -> bytes:
        """The raw bytes of one file; FileNotFoundError if it is not there."""
        if self.is_zip:
            try:
                return self._archive().read(name)
            except KeyError:
                raise FileNotFoundError(f"{name}: not in {self.root.name}") from None
        return self._path(name).read_bytes()


@dataclass
class Catalog:
    """The items of one catalog, the source their images are read from, and what was wrong."""

    path: Path
    source: ImageSource
    items: list[Item]
    problems: list[Problem] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        """What the index records so it can reopen the images later."""
        return {"path": str(self.path), "images_root": str(self.source.root), "options": self.options}


def load_catalog(path: str | Path, *, id_column: str = "id", image_column: str | None = None) -> Catalog:
    """Read a catalog from a Kaggle-layout folder or zip, or from a CSV/Parquet table.

    `image_column` names a column of image paths relative to the table's folder; without it, images
    are looked up as `images/<id>.jpg` beside the table (the Kaggle layout).
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise CatalogError(f"{path}: no such file or folder")
    options = {"id_column": id_column, "image_column": image_column or ""}
    try:
        source, prefix, rows = _open_table(path)
        items, problems = _items_from_rows(rows, source, prefix, id_column, image_column)
    except (CatalogError, csv.Error, OSError, ValueError) as error:
        raise CatalogError(f"{path}: {error}") from None
    return Catalog(path=path, source=source, items=items, problems=problems, options=options)


Row = tuple[int, list[str]]
Table = tuple[list[str], Iterator[Row]]


def _open_table(path: Path) -> tuple[ImageSource, str, Table]:
    """The image source, the images' prefix inside it, and the metadata table of a catalog path."""
    if path.is_dir():
        table = path / KAGGLE_STYLES
        if not table.is_file():
            raise CatalogError(f"folder has no {KAGGLE_STYLES} (expected the Kaggle layout)")
        return ImageSource(path), "", _read_csv_rows(table.read_bytes())
    if zipfile.is_zipfile(path):
        source = ImageSource(path)
        styles = sorted((n for n in source.names() if posixpath.basename(n) == KAGGLE_STYLES), key=len)
        if not styles:
            raise CatalogError(f"zip has no {KAGGLE_STYLES} (expected the Kaggle layout)")
        return source, posixpath.dirname(styles[0]), _read_csv_rows(source.read(styles[0]))
    if path.suffix.lower() == ".csv":
        return ImageSource(path.parent), "", _read_csv_rows(path.read_bytes())
    if path.suffix.lower() in TABLE_SUFFIXES:
        return ImageSource(path.parent), "", _read_parquet_rows(path)
    raise CatalogError("not a folder, zip, CSV or Parquet file")


def _read_csv_rows(data: bytes) -> Table:
    """Header and numbered rows of a CSV, read as text without guessing types (`NA` stays `NA`)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise CatalogError("the CSV file is empty")
    header = [h.strip() for h in header]
    return header, ((n, row) for n, row in enumerate(reader, start=2))


def _read_parquet_rows(path: Path) -> Table:
    import pandas as pd  # here: only Parquet catalogs need it, and it is heavy to import

    frame = pd.read_parquet(path)
    frame = frame.astype(object).where(frame.notna(), "").astype(str)
    header = [str(c) for c in frame.columns]
    return header, ((n, list(r)) for n, r in enumerate(frame.itertuples(index=False), start=2))


def _items_from_rows(
    table: Table,
    source: ImageSource,
    prefix: str,
    id_column: str,
    image_column: str | None,
) -> tuple[list[Item], list[Problem]]:
    header, rows = table
    if id_column not in header:
        raise CatalogError(f"no id column {id_column!r}; columns are {', '.join(header)}")
    if image_column and image_column not in header:
        raise CatalogError(f"no image column {image_column!r}; columns are {', '.join(header)}")
    id_at = header.index(id_column)
    items: list[Item] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            problems.append(Problem(f"line {line}", f"{len(row)} fields, expected {len(header)}"))
            continue
        if len(row) > len(header):
            # Kaggle quirk: an unquoted comma inside the last column (productDisplayName).
            extra = len(row) - len(header)
            row = row[: len(header) - 1] + [",".join(row[len(header) - 1 :])]
            problems.append(
                Problem(
                    row[id_at].strip() or f"line {line}",
                    f"line {line} had {extra} extra field(s); joined them into {header[-1]}",
                    "repaired",
                )
            )
        item_id = row[id_at].strip()
        if not item_id:
            problems.append(Problem(f"line {line}", "empty id"))
            continue
        if item_id in seen:
            problems.append(Problem(item_id, f"duplicate id (line {line}); the first row is kept"))
            continue
        seen.add(item_id)
        if image_column:
            image = row[header.index(image_column)].strip().replace("\\", "/")
        else:
            image = f"images/{item_id}.jpg"
        image = posixpath.normpath(posixpath.join(prefix, image)) if image else ""
        if not image or image.startswith("../") or not source.exists(image):
            problems.append(Problem(item_id, f"image {image or '(none)'} not found"))
            continue
        metadata = {h: v.strip() for h, v in zip(header, row, strict=True) if h != id_column}
        items.append(Item(id=item_id, image=image, metadata=metadata))
    return items, problems
