"""Stores: where an index keeps its vectors (see base.py for the seam).

`files` (the default): FAISS over files in the index directory. `milvus://PATH.db`: embedded Milvus
Lite; `milvus://host:port`: a Milvus server or cluster.
"""

from __future__ import annotations

from pathlib import Path

from fashionrec.stores.base import Filters, Hit, SearchSettings, StoreError, VectorStore

__all__ = ["Filters", "Hit", "SearchSettings", "StoreError", "VectorStore", "open_store"]


def open_store(uri: str, directory: Path, dim: int, settings: SearchSettings | None = None) -> VectorStore:
    """The store an index's manifest names, opened (created when new) for the index in `directory`.

    `settings` (exact or approximate, precision, threads) apply to the files store's in-memory search.
    """
    if uri in ("", "files"):
        from fashionrec.stores.files import FilesStore  # faiss loads only for this store

        return FilesStore.open(directory, dim, settings)
    if uri.startswith("milvus://"):
        from fashionrec.stores.milvus import MilvusStore  # pymilvus loads only for this store

        return MilvusStore.open(uri, directory, dim)
    raise StoreError(f"unknown store {uri!r}: use 'files', 'milvus://PATH.db' or 'milvus://HOST:PORT'")
