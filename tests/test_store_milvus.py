"""The Milvus store on a real engine: embedded Milvus Lite in a temp folder (the shared contract, plus
what only Milvus has: URIs, expression escaping, a restart in another process, server errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import store_contract as contract

import fashionrec
from fashionrec.colour import COLOUR_DIM
from fashionrec.stores import StoreError, open_store
from fashionrec.stores.milvus import MilvusStore, filter_expression, literal

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


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Lite database for the module; each test has its own collection in it (a fresh, empty store)."""
    return tmp_path_factory.mktemp("milvus-index")


def fresh(index_dir: Path, name: str, dim: int = contract.DIM) -> MilvusStore:
    store = open_store(f"milvus://lite.db?collection={name}", index_dir, dim)
    assert isinstance(store, MilvusStore)
    return store


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_contract(index_dir: Path, check) -> None:  # noqa: ANN001
    store = fresh(index_dir, f"contract_{check.__name__}")
    try:
        check(store)
    finally:
        store.close()


def test_contract_durable(index_dir: Path) -> None:
    contract.check_durable(lambda: fresh(index_dir, "durable"))


def test_survives_a_restart_in_another_process(tmp_path: Path) -> None:
    """Written by one process that then exits, read by this one: the Lite folder holds everything."""
    code = (
        "import sys; from pathlib import Path; import store_contract as c; from fashionrec.stores import open_store\n"
        "s = open_store('milvus://restart.db?collection=kept', Path(sys.argv[1]), c.DIM)\n"
        "ids, *_ = c.filled(s); s.delete([ids[0]]); s.close()\n"
    )
    path = os.pathsep.join([str(Path(__file__).parent), str(Path(fashionrec.__file__).parents[1])])
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], check=True, timeout=300, env={**os.environ, "PYTHONPATH": path}
    )
    ids, vectors, colours, _ = contract.catalog()
    store = open_store("milvus://restart.db?collection=kept", tmp_path, contract.DIM)
    try:
        assert store.count() == contract.ITEMS - 1
        assert np.allclose(store.colours(ids[1:3]), colours[1:3], atol=contract.TOLERANCE)
        assert store.search(vectors[9], 1, {"baseColour": [contract.COLOURS[0]]})[0][0].id == ids[9]
        assert ids[0] not in {hit.id for hit in store.search(vectors[0], 5)[0]}
    finally:
        store.close()


def test_quotes_and_backslashes_stay_data(index_dir: Path) -> None:
    """Hostile ids and values are matched literally: none widens a filter or an exclusion."""
    store = fresh(index_dir, "hostile")
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


def test_any_column_name_is_a_name(index_dir: Path) -> None:
    """Column names with quotes, brackets or spaces are stored and filtered as names, never as expression."""
    store = fresh(index_dir, "columns")
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


def test_another_dimension_is_refused(index_dir: Path) -> None:
    fresh(index_dir, "eight").close()
    with pytest.raises(StoreError, match="holds 8-d vectors"):
        fresh(index_dir, "eight", dim=16)


def test_wrong_shapes_are_refused(index_dir: Path) -> None:
    store = fresh(index_dir, "shapes")
    ids, vectors, colours, metadata = contract.catalog(4)
    try:
        with pytest.raises(ValueError, match="3 vectors"):
            store.upsert(ids, vectors[:3], colours, metadata)
        with pytest.raises(ValueError, match="16-d"):
            store.upsert(ids, np.hstack([vectors, vectors]), colours, metadata)
        with pytest.raises(ValueError, match="bad item id"):
            store.upsert(["", *ids[1:]], vectors, colours, metadata)
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


def test_another_client_reads_its_writes_at_once(index_dir: Path) -> None:
    """Strong consistency: a second connection sees an upsert and a delete the moment they return."""
    writer, reader = fresh(index_dir, "consistency"), fresh(index_dir, "consistency")
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
