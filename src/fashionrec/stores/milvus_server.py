"""A Milvus standalone server on this machine, without Docker: the server binary of the `milvus` package.

`pip install --no-deps milvus==2.3.5` (its metadata pins nothing fashionrec needs; pymilvus 3.0.2 talks
to it) ships a Milvus 2.3.5 standalone server with embedded etcd and local storage. The tests start one
per session and bench/milvus.py one per run; to try the server path by hand, the package's own command
does the same: `milvus-server --data /srv/milvus` (then `--store milvus://127.0.0.1:19530`).

The base directory receives the unpacked binaries (about 250 MB), etcd, the message queue and the data
(about 270 MB before any vector): give a scratch folder, never one inside a repository.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The nodes of a standalone server announce this address to each other (the default is the first
# non-loopback one): everything stays on loopback.
NODES = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


@contextmanager
def local_server(base_dir: Path) -> Iterator[str]:
    """A running server keeping everything in `base_dir`, on free ports; yields its "127.0.0.1:PORT".

    Each port is the first free one from Milvus's default (19530 for clients), so several servers (and
    test sessions) can run side by side. The server is stopped when the block ends; its data stay.
    """
    from milvus import MilvusServer, MilvusServerConfig

    base_dir.mkdir(parents=True, exist_ok=True)
    server = MilvusServer(MilvusServerConfig())
    server.set_base_dir(str(base_dir))
    for node in NODES:
        server.config.set(f"{node}.ip", "127.0.0.1")
    server.start()  # waits until the server answers its health check
    try:
        yield f"127.0.0.1:{server.listen_port}"
    finally:
        server.stop()
