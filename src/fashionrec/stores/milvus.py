"""Milvus store: an index's vectors in a Milvus collection (embedded Milvus Lite, a server or a cluster).

URIs (what `--store` takes and the manifest records):
- `milvus://PATH.db`: embedded Milvus Lite (a folder, despite the suffix). A relative PATH is relative to
  the index directory, never to the current directory: the index opens the same from anywhere and moves
  as one folder. Only one process at a time may open a Lite database (it holds a lock).
- `milvus://HOST:PORT`: a Milvus server or cluster; a token, if it needs one, comes from the environment
  variable FASHIONREC_MILVUS_TOKEN and is never written anywhere.
- Query options: `?collection=NAME` (default: `fashionrec_<random>`, recorded in the manifest's URI),
  `?index=HNSW|IVF_FLAT|IVF_SQ8|FLAT` (the ANN structure, see DEFAULT_INDEX) and
  `?consistency=Strong|Bounded|Session|Eventually` (what reads wait for, see below).

One collection per index: id (VARCHAR primary key), vector (FLOAT_VECTOR, inner product), colour (FLOAT
array: a second vector field needs Milvus >= 2.4 and an index of its own, and colours are only read back),
and one declared VARCHAR field per metadata column (`m_<column>`, see `metadata_key`). The collection is
created by the first upsert, when the columns are known; a column first seen later goes to Milvus's
dynamic field under the same name, so filters read `m_col in [...]` either way. Declared fields, not
dynamic keys: a server evaluates a filter on a dynamic key by parsing each row's JSON (docs/scaling.md
measures both), and a JSON field of our own is worse still on Milvus Lite (row by row in Python).

Reads use Strong consistency by default: a search right after an upsert or a delete, from this process or
another, sees it. On a server that costs a wait for the cluster's clock on every read (0.2-0.4 s a query
measured here); `?consistency=Bounded` answers in milliseconds and may miss writes of the last few
seconds. Deletes always look their ids up with Strong consistency, so they count what was really there.

Filter values are written into the expression as escaped string literals, not with `filter_params`
templates: Milvus Lite 3.2.2 rejects templates (`{name}` is a parse error) and servers before 2.5 ignore
them, so templates would work on some engines only. `literal` escapes every character the Milvus
grammar treats specially, and tests/test_store_milvus.py proves that quotes, backslashes and `" or 1==1`
stay data. Ids go the same way (pymilvus's own `get(ids=)`/`delete(ids=)` quoting breaks on a backslash).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import numpy as np

from fashionrec.colour import COLOUR_DIM
from fashionrec.stores.base import Filters, Hit, StoreError

PREFIX = "milvus://"
TOKEN_ENV = "FASHIONREC_MILVUS_TOKEN"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")  # what Milvus accepts as a collection name
PLAIN = re.compile(r"[A-Za-z0-9_]{1,200}")  # a column name usable as it is in a Milvus field name
ID_BYTES = 1024  # the VARCHAR length of the primary key
BATCH = 2_000  # rows per insert or id lookup: well under gRPC's 64 MB message limit at 1280-d
# index type -> (build params, search params). Milvus Lite 3.2.2 ignores build params (pymilvus 3 sends them
# as flat key-value pairs, Lite reads only a "params" entry): there IVF has 128 cells per segment of <= 100k
# rows and HNSW M 16, efConstruction 200 (its defaults). A server reads them.
INDEXES: dict[str, tuple[dict[str, int], dict[str, int]]] = {
    "FLAT": ({}, {}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 64}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 64}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 128}),
}
# bench/milvus_scale.py, docs/scaling.md. Milvus Lite: FLAT, the only exact one there (its IVF keeps 128 cells whatever
# asked, and its IVF and HNSW filter after the search: recall@10 0.2-0.7 with a 10% filter at 10k). A server:
# IVF_FLAT: recall@10 0.94 unfiltered, 0.95 under a 10% filter with FILTER_WIDENING, at 50k (docs/scaling.md).
DEFAULT_INDEX = {"lite": "FLAT", "server": "IVF_FLAT"}
# A server filters inside an IVF or HNSW search, but only among the cells or graph nodes it visits: with a 10%
# filter, IVF_FLAT at nprobe 64 of 1024 found 0.49 of the true top 10 at 50k, 0.81 at nprobe 256 (bench).
FILTER_WIDENING = 8
CONSISTENCY = ("Strong", "Bounded", "Session", "Eventually")
METADATA_BYTES = 65_535  # the VARCHAR length of a declared metadata field (Milvus's maximum)
DECLARED_MAX = 48  # metadata columns declared as fields; Milvus allows 64 fields, the rest go to the dynamic field
INDEX_TIMEOUT_S = 3600.0  # HNSW over 100k vectors takes minutes: the client must wait, not retry
CONNECT_TIMEOUT_S = 30.0
ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def literal(value: str) -> str:
    """A Milvus string literal that means exactly `value`, whatever quotes or backslashes it holds."""
    if not isinstance(value, str):
        raise TypeError(f"a filter value or id must be a string, got {value!r}")
    return '"' + "".join(ESCAPES.get(char, char) for char in value) + '"'


def id_list(ids: Iterable[str]) -> str:
    return "[" + ", ".join(literal(i) for i in ids) + "]"


def metadata_key(column: str) -> str:
    """The dynamic field of a metadata column: `m_<column>` for a plain name, `x_<hex of its UTF-8>` for any
    other (spaces, quotes, brackets), so no column name ever reaches an expression as anything but a name."""
    if not isinstance(column, str) or not column:
        raise ValueError(f"bad metadata column {column!r}: a column name is a non-empty string")
    key = f"m_{column}" if PLAIN.fullmatch(column) else f"x_{column.encode().hex()}"
    if len(key) > 255:
        raise ValueError(f"metadata column {column[:40]!r}...: too long a name for a Milvus field")
    return key


def filter_expression(filters: Filters | None, exclude: Collection[str] = ()) -> str | None:
    """The boolean expression for `filters` (every column, any of its values) and `exclude`; None for all."""
    clauses = []
    for column, values in sorted((filters or {}).items()):
        if isinstance(values, str):
            raise ValueError(f"filter {column!r}: give a list of accepted values, not the string {values!r}")
        clauses.append(f"{metadata_key(column)} in {id_list(dict.fromkeys(values))}")
    if exclude:
        clauses.append(f"id not in {id_list(exclude)}")
    return " and ".join(clauses) or None


@dataclass(frozen=True)
class Target:
    """A parsed store URI: where to connect and the options it gives (None: not given)."""

    address: str  # the client's URI: a Lite database path, or http://HOST:PORT
    lite_path: str | None  # the path as written in the URI, for a Lite database
    collection: str | None
    index: str | None
    consistency: str | None


def parse_uri(uri: str, directory: Path) -> Target:
    """What a store URI names; a relative Lite path is relative to the index directory."""
    if not uri.startswith(PREFIX):
        raise StoreError(f"not a Milvus store URI: {uri!r} (use milvus://PATH.db or milvus://HOST:PORT)")
    target, _, query = uri.removeprefix(PREFIX).partition("?")
    options = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(options) - {"collection", "index", "consistency"}
    if unknown:
        raise StoreError(
            f"{uri!r}: unknown option {sorted(unknown)[0]!r}; options are collection, index and consistency"
        )
    collection, index, consistency = options.get("collection"), options.get("index"), options.get("consistency")
    if collection is not None and not NAME.fullmatch(collection):
        raise StoreError(f"{uri!r}: bad collection name {collection!r} (letters, digits, underscores; max 255)")
    if index is not None and index.upper() not in INDEXES:
        raise StoreError(f"{uri!r}: unknown index {index!r}; choose from {', '.join(INDEXES)}")
    levels = {level.lower(): level for level in CONSISTENCY}
    if consistency is not None and consistency.lower() not in levels:
        raise StoreError(f"{uri!r}: unknown consistency {consistency!r}; choose from {', '.join(CONSISTENCY)}")
    index = index.upper() if index else None
    consistency = levels[consistency.lower()] if consistency else None
    if not target:
        raise StoreError(f"{uri!r}: no database path or server address after {PREFIX}")
    if target.endswith(".db"):
        path = (directory / Path(target).expanduser()).resolve()  # absolute paths stay as they are
        return Target(str(path), target, collection, index, consistency)
    if not re.fullmatch(r"[A-Za-z0-9.\-]+:\d{1,5}|\[[0-9A-Fa-f:]+\]:\d{1,5}", target):
        raise StoreError(f"{uri!r}: give a Lite database path ending in .db, or a server as HOST:PORT")
    return Target(f"http://{target}", None, collection, index, consistency)


class MilvusStore:
    """Vectors, colours and metadata of one index in one Milvus collection."""

    def __init__(
        self, client: object, uri: str, collection: str, dim: int, index: str, consistency: str = "Strong"
    ) -> None:
        self._client = client
        self.uri = uri
        self.collection = collection
        self.dim = dim
        self.index = index
        self.consistency = consistency  # what reads wait for (deletes look up with Strong whatever it is)
        self.search_params = dict(INDEXES[index][1])  # what each search asks (bench/milvus_scale.py sweeps it)
        self.filter_widening = FILTER_WIDENING  # how much wider a filtered search looks (1: as wide as any)
        self._fields: set[str] | None = None  # the declared metadata fields; None until the collection exists

    @classmethod
    def open(cls, uri: str, directory: Path, dim: int) -> MilvusStore:
        """The index's collection, checked and loaded when it exists (the first upsert creates it);
        refuses another dimension."""
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        target = parse_uri(uri, Path(directory))
        if target.lite_path is not None:
            Path(target.address).parent.mkdir(parents=True, exist_ok=True)
        try:
            with _quiet(logging.getLogger("milvus_lite.server_manager")):  # it logs a traceback, we raise one line
                client = MilvusClient(target.address, token=os.environ.get(TOKEN_ENV, ""), timeout=CONNECT_TIMEOUT_S)
        except (MilvusException, OSError) as error:
            hint = (
                " (Milvus Lite lets one process at a time open a database: is another fashionrec using it? "
                "Several processes, such as API workers, need a Milvus server)"
                if target.lite_path is not None
                else ""
            )
            raise StoreError(f"cannot open Milvus at {target.address}: {_message(error)}{hint}") from None
        collection = target.collection or f"fashionrec_{secrets.token_hex(8)}"
        options = {"collection": collection, "index": target.index, "consistency": target.consistency}
        written = target.lite_path if target.lite_path is not None else target.address.removeprefix("http://")
        engine = "lite" if target.lite_path is not None else "server"
        store = cls(
            client,
            f"{PREFIX}{written}?{urlencode({key: value for key, value in options.items() if value})}",
            collection,
            dim,
            target.index or DEFAULT_INDEX[engine],
            target.consistency or "Strong",
        )
        try:
            store._call("open", store._check_existing)
        except StoreError:
            client.close()
            raise
        return store

    def _check_existing(self) -> bool:
        """Whether the collection exists; if so, check its fields, adopt its index type and load it."""
        client = self._client
        if not client.has_collection(self.collection):
            return False
        fields = {f["name"]: f for f in client.describe_collection(self.collection)["fields"]}
        found = int(fields.get("vector", {}).get("params", {}).get("dim", -1))
        if not {"id", "vector", "colour"} <= set(fields) or found != self.dim:
            raise StoreError(
                f"collection {self.collection!r} holds {found}-d vectors or other fields, not this index's "
                f"{self.dim}-d vectors: give another ?collection= or rebuild"
            )
        built = (client.describe_index(self.collection, "vector") or {}).get("index_type", self.index)
        if built in INDEXES and built != self.index:  # searched as built, whatever the default is now
            self.index, self.search_params = built, dict(INDEXES[built][1])
        client.load_collection(self.collection, timeout=INDEX_TIMEOUT_S)
        self._fields = {name for name in fields if name.startswith(("m_", "x_"))}
        return True

    def _exists(self) -> bool:
        """Whether the collection exists (another process may have created it since this one opened it)."""
        return self._fields is not None or self._call("open", self._check_existing)

    def _create(self, metadata: Sequence[Mapping[str, str]]) -> None:
        """The collection, with a declared field for each metadata column of the first rows written."""
        from pymilvus import DataType, MilvusClient
        from pymilvus.exceptions import MilvusException

        columns = list(dict.fromkeys(metadata_key(column) for row in metadata for column in row))[:DECLARED_MAX]
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)  # columns first seen later
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("colour", DataType.ARRAY, element_type=DataType.FLOAT, max_capacity=COLOUR_DIM)
        for column in columns:
            schema.add_field(column, DataType.VARCHAR, max_length=METADATA_BYTES)
        params = self._client.prepare_index_params()
        params.add_index("vector", index_type=self.index, metric_type="IP", params=INDEXES[self.index][0])
        try:
            self._client.create_collection(
                self.collection, schema=schema, index_params=params, consistency_level="Strong", timeout=INDEX_TIMEOUT_S
            )
        except MilvusException as error:
            if not self._call("open", self._check_existing):  # not created by another process meanwhile
                raise StoreError(f"cannot create collection {self.collection!r}: {_message(error)}") from None
            return
        self._fields = set(columns)

    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, colours: np.ndarray, metadata: Sequence[Mapping[str, str]]
    ) -> None:
        """Insert or replace items (the last one wins for an id given twice)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        colours = np.asarray(colours, dtype=np.float32).reshape(len(colours), -1)
        if not len(ids) == len(vectors) == len(colours) == len(metadata):
            raise ValueError(
                f"upsert: {len(ids)} ids, {len(vectors)} vectors, {len(colours)} colours, {len(metadata)} metadata"
            )
        if len(ids) and (vectors.shape[1] != self.dim or colours.shape[1] != COLOUR_DIM):
            raise ValueError(
                f"upsert: vectors are {vectors.shape[1]}-d and colours {colours.shape[1]}-d; "
                f"this store holds {self.dim}-d vectors and {COLOUR_DIM}-d colours"
            )
        last = {item: row for row, item in enumerate(ids)}
        for item, row in last.items():
            _check_id(item)
            _check_metadata(item, metadata[row])
        if not last:
            return
        if not self._exists():
            self._create(metadata)
        blank = dict.fromkeys(self._fields or (), "")  # a declared field needs a value: "" is what a filter on a
        rows = [  # missing column reads on every store
            {"id": item, "vector": vectors[row], "colour": colours[row]}
            | blank
            | {metadata_key(column): str(value) for column, value in metadata[row].items()}
            for item, row in last.items()
        ]
        for start in range(0, len(rows), BATCH):
            self._call("upsert", self._client.upsert, self.collection, rows[start : start + BATCH])

    def delete(self, ids: Iterable[str]) -> int:
        """Remove items; returns how many were there (Milvus counts the ids asked, so they are looked up first)."""
        removed = 0
        ids = list(dict.fromkeys(ids))
        if not ids or not self._exists():
            return 0
        for part in _batches(ids):
            found = self._query(f"id in {id_list(part)}", ["id"], consistency_level="Strong")
            if found:
                there = id_list(row["id"] for row in found)
                self._call("delete", self._client.delete, self.collection, filter=f"id in {there}")
                removed += len(found)
        return removed

    def search(
        self, queries: np.ndarray, k: int, filters: Filters | None = None, exclude: Collection[str] = ()
    ) -> list[list[Hit]]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if k < 1 or any(not values for values in (filters or {}).values()) or not self._exists():
            filter_expression(filters, exclude)  # still refuse a bad column
            return [[] for _ in queries]
        results = self._call(
            "search",
            self._client.search,
            self.collection,
            data=queries,
            anns_field="vector",
            limit=k,
            filter=filter_expression(filters, exclude) or "",
            search_params={"metric_type": "IP", "params": self._search_params(k, bool(filters))},
            output_fields=["id"],
            consistency_level=self.consistency,
        )
        return [[Hit(str(hit["id"]), float(hit["distance"])) for hit in hits] for hits in results]

    def _search_params(self, k: int, filtered: bool) -> dict[str, int]:
        """What a search asks: HNSW's ef at least k; a filtered search looks `filter_widening` times wider
        (IVF: more cells, at most all of them), since most candidates it finds fail the filter."""
        params = dict(self.search_params)
        widening = self.filter_widening if filtered else 1
        if "nprobe" in params:
            params["nprobe"] = min(params["nprobe"] * widening, INDEXES[self.index][0].get("nlist", params["nprobe"]))
        if "ef" in params:
            params["ef"] = max(k, params["ef"] * widening)
        return params

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        return self._fetch(ids, "vector", self.dim)

    def colours(self, ids: Sequence[str]) -> np.ndarray:
        return self._fetch(ids, "colour", COLOUR_DIM)

    def _fetch(self, ids: Sequence[str], field: str, width: int) -> np.ndarray:
        """One field of these items, [len(ids), width] in the order asked; KeyError names a missing id."""
        found: dict[str, object] = {}
        wanted = list(dict.fromkeys(ids))
        for part in _batches(wanted if wanted and self._exists() else []):
            found.update((row["id"], row[field]) for row in self._query(f"id in {id_list(part)}", ["id", field]))
        out = np.empty((len(ids), width), np.float32)
        for row, item in enumerate(ids):
            if item not in found:
                raise KeyError(item)
            out[row] = found[item]
        return out

    def count(self) -> int:
        if not self._exists():
            return 0
        return int(self._query("", ["count(*)"])[0]["count(*)"])

    def stream(self, batch: int = 10_000) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        """Every item, `batch` at a time, in id order (bounded memory).

        A cursor of our own on the primary key (`id > last`, results ordered by key as Milvus's query
        iterator asks with `iterator=True`): pymilvus's QueryIterator quotes the last id naively and
        breaks on an id holding a backslash.
        """
        if not self._exists():
            return
        last: str | None = None
        while True:
            expression = f"id > {literal(last)}" if last is not None else ""
            rows = self._query(expression, ["id", "vector", "colour"], limit=batch, iterator="True")
            if not rows:
                return
            rows.sort(key=lambda row: row["id"])
            last = rows[-1]["id"]
            yield (
                [str(r["id"]) for r in rows],
                np.array([r["vector"] for r in rows], np.float32).reshape(len(rows), self.dim),
                np.array([r["colour"] for r in rows], np.float32).reshape(len(rows), COLOUR_DIM),
            )

    def close(self) -> None:
        """Flush (Lite writes its segments; a server seals them) and release the connection."""
        try:
            if self._fields is not None:
                self._call("close", self._client.flush, self.collection)
        finally:
            self._client.close()

    def _query(self, expression: str, fields: list[str], **options: object) -> list[dict]:
        options = {"consistency_level": self.consistency} | options
        return list(
            self._call("query", self._client.query, self.collection, filter=expression, output_fields=fields, **options)
        )

    def _call(self, what: str, method, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        """Run one client call; a Milvus error becomes a StoreError naming the collection and the step."""
        from pymilvus.exceptions import MilvusException

        try:
            return method(*args, **kwargs)
        except MilvusException as error:
            raise StoreError(f"Milvus {what} on collection {self.collection!r} failed: {_message(error)}") from None


def _check_id(item: str) -> None:
    if not isinstance(item, str) or not item:
        raise ValueError(f"bad item id {item!r}: an id is a non-empty string")
    if len(item.encode()) > ID_BYTES:
        raise ValueError(f"item id {item[:40]!r}...: longer than {ID_BYTES} bytes, the Milvus store's limit")


def _check_metadata(item: str, metadata: Mapping[str, str]) -> None:
    for column, value in metadata.items():
        if len(str(value).encode()) > METADATA_BYTES:
            raise ValueError(
                f"item {item!r}: its {column!r} value is longer than {METADATA_BYTES} bytes, the Milvus store's limit"
            )


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Silence a library logger for the duration of one call."""
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _batches(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


def _message(error: BaseException) -> str:
    return getattr(error, "message", None) or str(error)
