"""Catalog stage: turn a catalog source (folder, zip, CSV or Parquet) into items with metadata.

A catalog is read in place: a zip is never unpacked, a folder is never copied. Problems with single
rows or images are collected per item and reported; they never make the whole catalog fail.
"""

from __future__ import annotations

import csv
import fnmatch
import os
import posixpath
import re
import stat
import threading
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from fashionrec.images import MAX_BYTES, ImageError, ImageTooLarge, read_regular_file, too_large

KAGGLE_STYLES = "styles.csv"
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
MAX_TABLE_BYTES = 1024 * 2**20  # a metadata table (CSV) read whole: far above any real catalog's
READ_CHUNK = 2**20  # zip members are inflated this much at a time
MAX_ID_CHARS = 256  # ids name files and URL path segments: longer ones fit neither
ID_FORBIDDEN = set("/\\?#%")  # path separators and the characters a URL path segment cannot hold as is
ID_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # control, format, unassigned, line breaks
URL_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|(?i:data|file):")  # an image column value meant as a URL
URL_SCHEMES = ("http", "https")  # the only URLs fetched (remote.py): never file:, which would read local files
MAX_URL_CHARS = 2048


class CatalogError(ValueError):
    """The catalog as a whole cannot be read (missing file, no id column, ...)."""


@dataclass(frozen=True)
class Item:
    """One product: its id, where its image lives inside the source, and its metadata columns.

    `more_images` are further photos of the same product (several image columns, or rows repeating the id).
    """

    id: str
    image: str
    metadata: dict[str, str]
    more_images: tuple[str, ...] = ()

    @property
    def images(self) -> tuple[str, ...]:
        """All the product's photos, its main one first."""
        return (self.image, *self.more_images)


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

    Only regular files inside the root are ever read (symlinks resolved, zip symlink members
    refused), and never more than a bound: the size is checked before reading, and the read itself
    stops at the bound in case a zip header lies.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        self._zip: zipfile.ZipFile | None = None
        self._zip_lock = threading.Lock()  # decoding threads share one handle (zipfile reads are thread-safe)
        self._names: set[str] | None = None

    @property
    def is_zip(self) -> bool:
        return self.root.is_file()

    def __getstate__(self) -> dict[str, Path]:  # worker processes each open their own zip handle
        return {"root": self.root}

    def __setstate__(self, state: dict[str, Path]) -> None:
        self.__init__(state["root"])

    def _archive(self) -> zipfile.ZipFile:
        with self._zip_lock:
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

    def problem(self, name: str) -> str | None:
        """Why `name` (normalised, relative) cannot be read as an image file here, or None if it can."""
        if is_url(name):
            return None  # checked when the build fetches it (remote.py)
        if self.is_zip:
            try:
                info = self._archive().getinfo(name)
            except KeyError:
                return "not found"
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0: the zip tool recorded no file type
            if info.is_dir() or kind not in (0, stat.S_IFREG):
                return "not a regular file (a folder or symlink member)"
            return None
        try:
            path = self._path(name)
            if not stat.S_ISREG(path.stat().st_mode):
                return "not a regular file"
        except FileNotFoundError:
            return "not found"
        except OSError as error:  # a symlink loop, a name too long, no permission, ...
            return error.strerror or str(error)
        return None

    def _path(self, name: str) -> Path:
        """The real path of `name`, symlinks resolved; an error if it lies outside the root."""
        path = Path(os.path.realpath(self.root / name))
        if not path.is_relative_to(self.root):
            raise PermissionError(0, "outside the catalog folder (a symlink)", name)
        return path

    def read(self, name: str, limit: int = MAX_BYTES) -> bytes:
        """The raw bytes of one file: FileNotFoundError if it is not there, ImageError if not a usable file."""
        if is_url(name):  # never a path: a URL is read from the index's cache (remote.CachedSource)
            raise ImageError(name, "an image URL, not fetched yet (remote.fetch_images fetches it)")
        if not self.is_zip:
            return read_regular_file(self._path(name), name, limit)
        try:
            info = self._archive().getinfo(name)
        except KeyError:
            raise FileNotFoundError(f"{name}: not in {self.root.name}") from None
        if info.file_size > limit:
            raise ImageTooLarge(name, too_large(info.file_size, limit))
        try:
            with self._archive().open(info) as member:
                data = _read_bounded(member, limit)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
            raise ImageError(name, f"unreadable zip member ({error})") from None  # bad CRC, encrypted, ...
        if len(data) > limit:
            raise ImageTooLarge(name, too_large(len(data), limit))
        return data


def _read_bounded(member: IO[bytes], limit: int) -> bytes:
    """At most limit + 1 bytes of a zip member, inflated a chunk at a time: a member whose header
    lies about its size costs neither more memory than the limit nor a large inflate in one step."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit and (chunk := member.read(min(READ_CHUNK, limit + 1 - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def id_problem(item_id: str) -> str | None:
    """Why `item_id` cannot be a product id, or None: ids must be usable as file names and URL path segments.

    Shared with the REST API, so a catalog and an upload accept the same ids.
    """
    if not item_id.strip():
        return "empty id"
    if len(item_id) > MAX_ID_CHARS:
        return f"id longer than {MAX_ID_CHARS} characters"
    if item_id in (".", ".."):
        return f"id {item_id!r} is not a usable name"
    for char in item_id:
        if char in ID_FORBIDDEN or unicodedata.category(char) in ID_FORBIDDEN_CATEGORIES:
            return f"id contains {char!r}, which ids cannot hold (a path or URL character, or a control character)"
    return None


def image_name_problem(value: str) -> str | None:
    """Why an image column value cannot name a file inside the catalog, before looking at the files.

    A value with a colon in its first segment is refused: `index:` marks images stored in the index
    itself (index.UPLOADED), and `C:` or `http:` name nothing inside the catalog either.
    """
    if "\0" in value:
        return "image path contains a NUL character"
    if value.startswith("/"):
        return "image path is absolute; it must be relative to the catalog"
    if ":" in value.split("/", 1)[0]:
        return "image path has a scheme or drive prefix (like index: or C:); it must be relative to the catalog"
    return None


def is_url(value: str) -> bool:
    """Whether an image column value is an http(s) URL, fetched into the index by the build (remote.py)."""
    return value[:8].lower().startswith(("http://", "https://"))


def url_problem(url: str) -> str | None:
    """Why an image column value written as a URL cannot be fetched, or None: only http(s) URLs with a host."""
    scheme = url.split(":", 1)[0].lower()
    if scheme not in URL_SCHEMES:
        return f"a {scheme}: URL; only http and https image URLs are fetched"
    if len(url) > MAX_URL_CHARS:
        return f"URL longer than {MAX_URL_CHARS} characters"
    if any(char.isspace() or not char.isprintable() for char in url):
        return "URL contains spaces or control characters"
    try:
        host, _ = urlsplit(url).hostname, urlsplit(url).port
    except ValueError as error:
        return f"unusable URL ({error})"
    return None if host else "URL has no host"


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


def load_catalog(
    path: str | Path, *, id_column: str = "id", image_column: str | Sequence[str] | None = None
) -> Catalog:
    """Read a catalog from a Kaggle-layout folder or zip, or from a CSV/Parquet table.

    `image_column` names a column of image paths relative to the table's folder, or of http(s) URLs (the
    build fetches them: remote.py); without it, images are looked up as `images/<id>.jpg` beside the
    table (the Kaggle layout). Several columns (a list, names separated by commas, or a pattern such as
    `*image*`) give a product several photos, as do rows that repeat an id with other images (see
    `image_columns`).
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise CatalogError(f"{path}: no such file or folder")
    spec = image_column if image_column is None or isinstance(image_column, str) else ",".join(image_column)
    options = {"id_column": id_column, "image_column": spec or ""}
    try:
        source, prefix, rows = _open_table(path)
        items, problems = _items_from_rows(rows, source, prefix, id_column, image_column)
    except (CatalogError, csv.Error, OSError, ValueError) as error:
        raise CatalogError(f"{path}: {error}") from None
    return Catalog(path=path, source=source, items=items, problems=problems, options=options)


@dataclass(frozen=True)
class Row:
    """One record of a table: its first line number and fields, or why it cannot be used."""

    line: int
    fields: list[str]
    error: str | None = None  # the row is unusable; `fields` may hold its first fields, to name it
    repaired: str | None = None  # the row was read, with this repair


Table = tuple[list[str], Iterator[Row]]


def _open_table(path: Path) -> tuple[ImageSource, str, Table]:
    """The image source, the images' prefix inside it, and the metadata table of a catalog path."""
    if path.is_dir():
        table = path / KAGGLE_STYLES
        if not table.is_file():
            raise CatalogError(f"folder has no {KAGGLE_STYLES} (expected the Kaggle layout)")
        return ImageSource(path), "", _read_csv_rows(read_table(table))
    if zipfile.is_zipfile(path):
        source = ImageSource(path)
        styles = sorted((n for n in source.names() if posixpath.basename(n) == KAGGLE_STYLES), key=len)
        if not styles:
            raise CatalogError(f"zip has no {KAGGLE_STYLES} (expected the Kaggle layout)")
        return source, posixpath.dirname(styles[0]), _read_csv_rows(source.read(styles[0], MAX_TABLE_BYTES))
    if path.suffix.lower() == ".csv":
        return ImageSource(path.parent), "", _read_csv_rows(read_table(path))
    if path.suffix.lower() in TABLE_SUFFIXES:
        return ImageSource(path.parent), "", _read_parquet_rows(path)
    raise CatalogError("not a folder, zip, CSV or Parquet file")


def read_table(path: Path) -> bytes:
    """A table file's bytes: a regular file, within MAX_TABLE_BYTES."""
    try:
        return read_regular_file(path, str(path), MAX_TABLE_BYTES)
    except ImageError as error:
        raise CatalogError(error.reason) from None


class _Lines:
    """The physical lines of a text, iterated with a position that can be moved back (to re-read lines)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.pos = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def _decode_lines(data: bytes) -> tuple[list[str], dict[int, str]]:
    """The lines of a CSV (any of CR, LF, CRLF ends) decoded one by one, and the line numbers repaired.

    UTF-8 is decoded line by line, so one stray byte costs one line a replacement character instead
    of garbling the whole file; a file where no line is valid non-ASCII UTF-8 is read as latin-1.
    """
    raw = data.removeprefix(b"\xef\xbb\xbf").splitlines(keepends=True)
    decoded: list[str | None] = []
    for line in raw:
        try:
            decoded.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            decoded.append(None)
    if None in decoded and not any(text and not text.isascii() for text in decoded):
        return [line.decode("latin-1") for line in raw], {}
    repaired: dict[int, str] = {}
    for n, line in enumerate(raw):
        if decoded[n] is None:
            decoded[n] = line.decode("utf-8", "replace")
            repaired[n + 1] = "invalid UTF-8 bytes replaced by \ufffd"
    return [text or "" for text in decoded], repaired


def _read_csv_rows(data: bytes) -> Table:
    """Header and rows of a CSV, read as text without guessing types (`NA` stays `NA`)."""
    text, repaired = _decode_lines(data)
    lines = _Lines(text)
    header = next(csv.reader(lines), None)
    if not header:
        raise CatalogError("the CSV file is empty")
    header = [h.strip() for h in header]
    return header, _csv_rows(lines, len(header), repaired)


def _csv_rows(lines: _Lines, width: int, repaired: dict[int, str]) -> Iterator[Row]:
    """The records of a CSV, each bad one reported on its own and the rest read right.

    A record that spans several lines (a quoted field with line breaks) but has the wrong number of
    fields is an unbalanced quote that swallowed the rows after it: its first line is reported and
    the lines after it are read again as rows of their own. A field over csv's size limit costs its row.
    """
    while lines.pos < len(lines.lines):
        start = lines.pos
        reader = csv.reader(lines)
        try:
            fields, error = next(reader, None), None
        except csv.Error as csv_error:
            fields, error = None, str(csv_error)
        if fields is None and error is None:
            return
        spanned = lines.pos - start
        if error is None and spanned > 1 and fields is not None and len(fields) != width:
            error = (
                f"unbalanced quote: a quoted field runs over {spanned} lines and leaves {len(fields)} fields, "
                f"expected {width}; the lines after it are read again"
            )
        if error is not None:
            yield Row(start + 1, next(csv.reader([lines.lines[start][:1024]]), []), error=error)
            lines.pos = start + 1 if spanned > 1 else lines.pos
            continue
        notes = [repaired[n] for n in range(start + 1, lines.pos + 1) if n in repaired]
        yield Row(start + 1, fields or [], repaired=notes[0] if notes else None)


def _read_parquet_rows(path: Path) -> Table:
    import pandas as pd  # here: only Parquet catalogs need it, and it is heavy to import

    frame = pd.read_parquet(path)
    frame = frame.astype(object).where(frame.notna(), "").astype(str)
    header = [str(c) for c in frame.columns]
    return header, (Row(n, list(r)) for n, r in enumerate(frame.itertuples(index=False), start=2))


def _image_name(value: str, prefix: str) -> tuple[str, str | None]:
    """The normalised name of an image column value inside the source, or why it cannot name a file there.

    A URL is kept as it is (the build fetches it into the index, remote.py), or refused if not http(s).
    """
    if URL_LIKE.match(value):
        return value, url_problem(value)
    value = value.replace("\\", "/")
    if not value:
        return value, "no image given"
    why = image_name_problem(value)
    if why is not None:
        return value, why
    name = posixpath.normpath(posixpath.join(prefix, value))
    if name in (".", "..") or name.startswith("../"):
        return value, "image path leads outside the catalog"
    return name, image_name_problem(name)


def _items_from_rows(
    table: Table,
    source: ImageSource,
    prefix: str,
    id_column: str,
    image_column: str | Sequence[str] | None,
) -> tuple[list[Item], list[Problem]]:
    header, rows = table
    if id_column not in header:
        raise CatalogError(f"no id column {id_column!r}; columns are {', '.join(header)}")
    image_at = [header.index(column) for column in image_columns(header, image_column)]
    id_at = header.index(id_column)
    items: list[Item] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}  # id -> its product's place in `items`
    for row in rows:
        line, fields = row.line, row.fields
        complete = len(fields) if row.error is None else len(fields) - 1  # an unusable row's last field may be cut
        name = (fields[id_at].strip() if id_at < complete else "") or f"line {line}"
        if row.error is not None:
            problems.append(Problem(name, f"line {line}: {row.error}"))
            continue
        if not any(cell.strip() for cell in fields):
            continue
        if len(fields) < len(header):
            problems.append(Problem(f"line {line}", f"{len(fields)} fields, expected {len(header)}"))
            continue
        if row.repaired is not None:
            problems.append(Problem(name, f"line {line}: {row.repaired}", "repaired"))
        if len(fields) > len(header):
            # Kaggle quirk: an unquoted comma inside the last column (productDisplayName).
            extra = len(fields) - len(header)
            fields = fields[: len(header) - 1] + [",".join(fields[len(header) - 1 :])]
            problems.append(
                Problem(name, f"line {line} had {extra} extra field(s); joined them into {header[-1]}", "repaired")
            )
        item_id = fields[id_at].strip()
        why = id_problem(item_id)
        if why is not None:
            problems.append(Problem(name, why if why == "empty id" else f"line {line}: {why}"))
            continue
        metadata = {h: v.strip() for h, v in zip(header, fields, strict=True) if h != id_column}
        images, wrong = _row_images(item_id, [fields[at] for at in image_at], source, prefix)
        if not images and item_id not in seen:
            problems.append(Problem(item_id, "; ".join(wrong)))
            continue
        problems.extend(Problem(item_id, f"{why}; the product keeps its other photos", "repaired") for why in wrong)
        if item_id in seen:
            _add_photos(items, seen[item_id], images, metadata, line, problems)
            continue
        seen[item_id] = len(items)
        items.append(Item(id=item_id, image=images[0], metadata=metadata, more_images=tuple(images[1:])))
    return items, problems


# Several photos per product (README "Several photos per product"): image columns, and rows repeating an id.


def image_columns(header: list[str], spec: str | Sequence[str] | None) -> list[str]:
    """The image columns that `spec` names, in its order: a column, columns separated by commas (or a list),
    or patterns such as `*image*` (fnmatch, case-sensitive) that pick the matching columns in table order.
    None or empty: no column, images are `images/<id>.jpg` (the Kaggle layout)."""
    if not spec:
        return []
    if isinstance(spec, str):
        spec = [spec] if spec in header else spec.split(",")
    columns: list[str] = []
    for name in (part.strip() for part in spec):
        pattern = name not in header and bool(set(name) & set("*?["))
        if pattern:
            found = [column for column in header if fnmatch.fnmatchcase(column, name)]
        else:
            found = [name] if name in header else []
        if not found:
            kind = "column matches the image column pattern" if pattern else "image column"
            raise CatalogError(f"no {kind} {name!r}; columns are {', '.join(header)}")
        columns += [column for column in found if column not in columns]
    return columns


def _row_images(item_id: str, values: list[str], source: ImageSource, prefix: str) -> tuple[list[str], list[str]]:
    """A row's usable images (in column order, each once) and why the others cannot be used.

    Empty cells of a row with several image columns are no photo, not a problem (products have fewer
    photos than columns); without any image column the image is `images/<id>.jpg`.
    """
    if not values:
        names = [(posixpath.normpath(posixpath.join(prefix, f"images/{item_id}.jpg")), None)]
    else:
        given = [value.strip() for value in values if value.strip()] or [""]
        names = [_image_name(value, prefix) for value in given]
    images: list[str] = []
    wrong: list[str] = []
    for image, why in names:
        why = why or source.problem(image)
        if why is not None:
            wrong.append(f"image {image} not found" if why == "not found" else f"image {image!r}: {why}")
        elif image not in images:
            images.append(image)
    return images, wrong


def _add_photos(
    items: list[Item], at: int, images: list[str], metadata: dict[str, str], line: int, problems: list[Problem]
) -> None:
    """A row repeating a product's id: its new images become more photos of that product, whose metadata
    stays the first row's; a row that adds no image is a duplicate, reported and skipped."""
    product = items[at]
    new = [image for image in images if image not in product.images]
    if not new:
        problems.append(Problem(product.id, f"duplicate id (line {line}); the first row is kept"))
        return
    items[at] = replace(product, more_images=(*product.more_images, *new))
    if metadata != product.metadata:
        problems.append(
            Problem(product.id, f"line {line} repeats the id with other metadata: its photos are added, "
                    "its metadata left out (the first row's is kept)", "repaired")
        )  # fmt: skip
