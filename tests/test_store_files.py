"""The files store (FAISS over files in the index directory) against the store contract, and what is its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import store_contract
from store_contract import DIM

from fashionrec.stores import SearchSettings, open_store
from fashionrec.stores.files import FilesStore

CHECKS = [
    store_contract.check_upsert_search,
    store_contract.check_filters,
    store_contract.check_delete,
    store_contract.check_vectors_and_colours,
    store_contract.check_stream,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_files_store_keeps_the_contract(check, kind: str, tmp_path: Path) -> None:
    check(FilesStore.open(tmp_path, DIM, SearchSettings(kind=kind)))


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_in_memory_store_keeps_the_contract(check) -> None:
    check(FilesStore.in_memory(DIM))


def test_files_store_is_durable(tmp_path: Path) -> None:
    store_contract.check_durable(lambda: open_store("files", tmp_path, DIM))
