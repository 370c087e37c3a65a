"""The Milvus store on real engines: embedded Milvus Lite in a temp folder, and a Milvus 2.3.5 standalone
server the session starts (the shared contract on both, plus what only Milvus has: URIs, expression
escaping, declared metadata fields, consistency levels, a restart in another process, server errors)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import store_contract as contract

import fashionrec
from fashionrec.colour import COLOUR_DIM
from fashionrec.stores import StoreError, open_store
from fashionrec.stores.milvus import METADATA_BYTES, MilvusStore, filter_expression, literal

from conftest import run_cli, sample_rows, write_catalog

pytestmark = pytest.mark.milvus

CHECKS = [
    contract.check_upsert_search,
    contract.check_filters,
    contract.check_delete,
    contract.check_vectors_and_colours,
    contract.check_stream,
]
HOSTILE = ['say "hi"', "back\\slash", '" or 1==1', '\\" or id != "', "line\nbreak", "tab\there", "it's"]


@dataclass(frozen=True)
class Engine:
    """Where a test's stores live: a Lite database of its own (an idle module-wide one lost its gRPC
    connection to Milvus Lite's keepalive policy), or a collection of its own on the session's server."""

    kind: str  # "lite" or "server"
    target: str  # what follows milvus://
    directory: Path  # the index directory a relative Lite path is relative to

    def uri(self, name: str, **options: str) -> str:
        """The store URI of collection `name` (unique on the server: the session's tests share it)."""
        suffix = f"_{secrets.token_hex(4)}" if self.kind == "server" else ""
        query = "".join(f"&{key}={value}" for key, value in options.items())
        return f"milvus://{self.target}?collection={name}{suffix}{query}"


@pytest.fixture(params=["lite", pytest.param("server", marks=pytest.mark.slow)])  # the server: ~2 min of tests
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "lite":
        return Engine("lite", "lite.db", tmp_path)
    return Engine("server", request.getfixturevalue("milvus_server"), tmp_path)


def fresh(engine: Engine, name: str, dim: int = contract.DIM) -> MilvusStore:
    return opened(engine.uri(name), engine, dim)


def opened(uri: str, engine: Engine, dim: int = contract.DIM) -> MilvusStore:
    store = open_store(uri, engine.directory, dim)
    assert isinstance(store, MilvusStore)
    return store


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_contract(engine: Engine, check) -> None:  # noqa: ANN001
    store = fresh(engine, f"contract_{check.__name__}")
    try:
        check(store)
    finally:
        store.close()


def test_contract_durable(engine: Engine) -> None:
    uri = engine.uri("durable")
    contract.check_durable(lambda: opened(uri, engine))


def test_survives_a_restart_in_another_process(engine: Engine) -> None:
    """Written by one process that then exits, read by this one: the engine holds everything."""
    uri = engine.uri("kept")
    code = (
        "import sys; from pathlib import Path; import store_contract as c; from fashionrec.stores import open_store\n"
        "s = open_store(sys.argv[1], Path(sys.argv[2]), c.DIM)\n"
        "ids, *_ = c.filled(s); s.delete([ids[0]]); s.close()\n"
    )
    path = os.pathsep.join([str(Path(__file__).parent), str(Path(fashionrec.__file__).parents[1])])
    subprocess.run(
        [sys.executable, "-c", code, uri, str(engine.directory)],
        check=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": path},
    )
    ids, vectors, colours, _ = contract.catalog()
    store = opened(uri, engine)
    try:
        assert store.count() == contract.ITEMS - 1
        assert np.allclose(store.colours(ids[1:3]), colours[1:3], atol=contract.TOLERANCE)
        assert store.search(vectors[9], 1, {"baseColour": [contract.COLOURS[0]]})[0][0].id == ids[9]
        assert ids[0] not in {hit.id for hit in store.search(vectors[0], 5)[0]}
    finally:
        store.close()


def test_quotes_and_backslashes_stay_data(engine: Engine) -> None:
    """Hostile ids and values are matched literally: none widens a filter or an exclusion."""
    store = fresh(engine, "hostile")
    try:
        ids = [f"id {value}" for value in HOSTILE]
        vectors = contract.unit_rows(len(ids), contract.DIM, 3)
        colours = np.abs(contract.unit_rows(len(ids), COLOUR_DIM, 4))
        store.upsert(ids, vectors, colours, [{"name": value} for value in HOSTILE])
        for position, value in enumerate(HOSTILE):
            hits = store.search(vectors[0], len(ids), {"name": [value]})[0]
            assert [hit.id for hit in hits] == [ids[position]], f"filter {value!r} matched {hits}"
            rest = store.search(vectors[0], len(ids), exclude=[ids[position]])[0]
            assert sorted(hit.id for hit in rest) == sorted(set(ids) - {ids[position]}), value
        assert np.allclose(store.vectors(ids[::-1]), vectors[::-1], atol=contract.TOLERANCE)
        assert sorted(i for batch, _, _ in store.stream(batch=2) for i in batch) == sorted(ids)
        assert store.delete(ids[:3]) == 3 and store.count() == len(ids) - 3
    finally:
        store.close()


def test_any_column_name_is_a_name(engine: Engine) -> None:
    """Column names with quotes, brackets or spaces are stored and filtered as names, never as expression."""
    store = fresh(engine, "columns")
    columns = ['t"] or 1==1 or m_x in ["', "na me", "1st", "baseColour"]
    try:
        vectors = contract.unit_rows(len(columns), contract.DIM, 5)
        colours = np.abs(contract.unit_rows(len(columns), COLOUR_DIM, 6))
        store.upsert([f"i{n}" for n in range(len(columns))], vectors, colours, [{c: "yes"} for c in columns])
        for position, column in enumerate(columns):
            assert [hit.id for hit in store.search(vectors[0], 9, {column: ["yes"]})[0]] == [f"i{position}"], column
    finally:
        store.close()
    with pytest.raises(ValueError, match="bad metadata column"):
        filter_expression({"": ["x"]})


def test_expression_shape() -> None:
    """What goes to Milvus: one `==` per accepted value, columns joined by `and`, ids excluded."""
    expression = filter_expression({"year": ["2012"], "baseColour": ["Red", 'Bl"ue']}, exclude=["a\\b"])
    assert expression == 'm_baseColour in ["Red", "Bl\\"ue"] and m_year in ["2012"] and id not in ["a\\\\b"]'
    assert filter_expression(None) is None and filter_expression({}, ()) is None
    assert literal('" or 1==1') == '"\\" or 1==1"'


def test_relative_path_is_the_index_directory_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`milvus://x.db` lives in the index directory, so the index opens the same from any current directory."""
    index = tmp_path / "index"
    monkeypatch.chdir(tmp_path)
    store = open_store("milvus://vectors.db", index, contract.DIM)
    uri = store.uri
    try:
        contract.filled(store, 5)
    finally:
        store.close()
    assert (index / "vectors.db").is_dir() and not (tmp_path / "vectors.db").exists()
    assert uri.startswith("milvus://vectors.db?collection=fashionrec_"), uri
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = open_store(uri, index, contract.DIM)
    try:
        assert again.uri == uri and again.count() == 5
    finally:
        again.close()


def test_another_dimension_is_refused(engine: Engine) -> None:
    uri = engine.uri("eight")
    store = opened(uri, engine)
    contract.filled(store, 3)  # the first upsert creates the collection
    store.close()
    with pytest.raises(StoreError, match="holds 8-d vectors"):
        opened(uri, engine, dim=16)


def test_wrong_shapes_are_refused(engine: Engine) -> None:
    store = fresh(engine, "shapes")
    ids, vectors, colours, metadata = contract.catalog(4)
    try:
        with pytest.raises(ValueError, match="3 vectors"):
            store.upsert(ids, vectors[:3], colours, metadata)
        with pytest.raises(ValueError, match="16-d"):
            store.upsert(ids, np.hstack([vectors, vectors]), colours, metadata)
        with pytest.raises(ValueError, match="bad item id"):
            store.upsert(["", *ids[1:]], vectors, colours, metadata)
        too_long = [*metadata[:3], {"productDisplayName": "x" * (METADATA_BYTES + 1)}]
        with pytest.raises(
            ValueError, match=f"item 'item-3': its 'productDisplayName' value is longer than {METADATA_BYTES}"
        ):
            store.upsert(ids, vectors, colours, too_long)
        assert store.count() == 0, "a refused upsert wrote something"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("milvus://", "no database path"),
        ("milvus://somehost", "HOST:PORT"),
        ("milvus://x.db?collection=a-b", "bad collection name"),
        ("milvus://x.db?index=DISKANN", "unknown index"),
        ("milvus://x.db?password=x", "unknown option"),
        ("milvus://x.db?consistency=Sometimes", "unknown consistency 'Sometimes'; choose from Strong, Bounded"),
        ("milvus://127.0.0.1:1", "cannot open Milvus at http://127.0.0.1:1"),
    ],
)
def test_bad_uri_is_a_clear_error(tmp_path: Path, uri: str, problem: str) -> None:
    with pytest.raises(StoreError, match=problem):
        open_store(uri, tmp_path, contract.DIM)


def test_token_is_never_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASHIONREC_MILVUS_TOKEN", "root:Milvus-secret")
    store = open_store("milvus://t.db?index=flat", tmp_path, contract.DIM)
    try:
        assert "secret" not in store.uri and store.uri.endswith("&index=FLAT"), store.uri
    finally:
        store.close()


@pytest.mark.slow
def test_cli_builds_resumes_and_searches_on_milvus_lite(tmp_path: Path) -> None:
    """`fashionrec index --store milvus://...` end to end, as a user runs it: build, rerun (resume), similar."""
    header, rows = sample_rows(24, seed=5)
    catalog, index = write_catalog(tmp_path / "catalog", header, rows), tmp_path / "idx"
    built = run_cli("index", str(catalog), "--out", str(index), "--store", "milvus://vectors.db", "--workers", "0")
    assert built.returncode == 0, built.stderr
    recorded = json.loads((index / "manifest.json").read_text())["store"]
    assert recorded.startswith("milvus://vectors.db?collection=fashionrec_") and (index / "vectors.db").is_dir()
    again = run_cli("index", str(catalog), "--out", str(index), "--store", "milvus://vectors.db", "--workers", "0")
    assert again.returncode == 0, again.stderr
    assert json.loads((index / "manifest.json").read_text())["store"] == recorded, "a rerun made another collection"
    found = run_cli("similar", str(index), rows[0][0], "-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    matches = json.loads(found.stdout)
    assert len(matches) == 3 and rows[0][0] not in {m["id"] for m in matches}


def test_another_client_reads_its_writes_at_once(engine: Engine) -> None:
    """Strong consistency (the default): a second connection, opened before the collection existed, sees an
    upsert and a delete the moment they return."""
    uri = engine.uri("consistency")
    writer, reader = opened(uri, engine), opened(uri, engine)
    try:
        ids, vectors, colours, metadata = contract.catalog(10)
        for n in range(10):
            writer.upsert(ids[n : n + 1], vectors[n : n + 1], colours[n : n + 1], metadata[n : n + 1])
            assert reader.count() == n + 1 and reader.search(vectors[n], 1)[0][0].id == ids[n]
        writer.delete([ids[4]])
        assert reader.count() == 9 and ids[4] not in {hit.id for hit in reader.search(vectors[4], 10)[0]}
    finally:
        writer.close()
        reader.close()


def test_a_bounded_reader_sees_the_writes_soon(engine: Engine) -> None:
    """`?consistency=Bounded` is recorded and used for reads; the writes show up within seconds."""
    uri = engine.uri("bounded")
    writer = opened(uri, engine)
    reader = opened(f"{uri}&consistency=bounded", engine)
    try:
        assert reader.consistency == "Bounded" and reader.uri.endswith("&consistency=Bounded"), reader.uri
        assert writer.consistency == "Strong" and "consistency" not in writer.uri
        ids, vectors, _, _ = contract.filled(writer, 20)
        deadline = time.monotonic() + 60  # Milvus's bound is a few seconds; the deadline only ends a broken run
        while reader.count() < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert reader.count() == 20 and reader.search(vectors[7], 1)[0][0].id == ids[7]
    finally:
        writer.close()
        reader.close()


def test_metadata_columns_are_declared_fields(engine: Engine) -> None:
    """The first upsert's columns become VARCHAR fields (filtered as columns, not parsed from JSON); a column
    first seen later is kept in the dynamic field and filters the same; a missing value filters as ""."""
    store = fresh(engine, "declared")
    try:
        ids, vectors, colours, metadata = contract.filled(store, 12)
        fields = {f["name"]: f for f in store._client.describe_collection(store.collection)["fields"]}
        assert {"m_baseColour", "m_articleType", "m_year"} <= set(fields), sorted(fields)
        assert fields["m_baseColour"]["type"].name == "VARCHAR"
        store.upsert(["late"], vectors[:1], colours[:1], [{"season": "Summer"}])
        assert "m_season" not in {f["name"] for f in store._client.describe_collection(store.collection)["fields"]}
        assert [hit.id for hit in store.search(vectors[0], 5, {"season": ["Summer"]})[0]] == ["late"]
        assert [hit.id for hit in store.search(vectors[0], 5, {"baseColour": [""]})[0]] == ["late"]
        reds = {ids[n] for n, meta in enumerate(metadata) if meta["baseColour"] == "Red"}
        assert {hit.id for hit in store.search(vectors[0], 12, {"baseColour": ["Red"]})[0]} == reds
    finally:
        store.close()


def test_default_index_per_engine(engine: Engine) -> None:
    """Exact FLAT on Lite (its IVF and HNSW filter after the search); IVF_FLAT on a server (docs/scaling.md)."""
    store = fresh(engine, "default_index")
    try:
        contract.filled(store, 5)
        built = store._client.describe_index(store.collection, "vector")["index_type"]
        assert built == store.index == {"lite": "FLAT", "server": "IVF_FLAT"}[engine.kind]
        if engine.kind == "server":  # a filtered search probes 8x the cells: most of what it finds fails the filter
            assert store._search_params(10, False) == {"nprobe": 64} and store._search_params(10, True) == {
                "nprobe": 512
            }
    finally:
        store.close()
