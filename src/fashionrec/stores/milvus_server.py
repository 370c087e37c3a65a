"""A Milvus standalone server on this machine, without Docker: the server binary of the `milvus` package.

`pip install --no-deps milvus==2.3.5` (no dependencies of its own; pymilvus 3.0.2 talks to it) ships a
Milvus 2.3.5 standalone server with embedded etcd and local storage. The tests start one per session and
bench/milvus_scale.py one per run; to try the server path by hand, the package's own command does the
same: `milvus-server --data /srv/milvus` (then `--store milvus://127.0.0.1:19530`).

The base directory receives the unpacked binaries (about 250 MB), etcd, the message queue and the data
(about 270 MB before any vector): give a scratch folder, never one inside a repository.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The nodes of a standalone server announce this address to each other (the default is the first
# non-loopback one): they talk over loopback.
NODES = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


@contextmanager
def local_server(base_dir: Path, auto_compaction: bool = True) -> Iterator[str]:
    """A running server keeping everything in `base_dir`, on free ports; yields its "127.0.0.1:PORT".

    The package picks each Milvus port as the first free one from Milvus's default (19530 for clients),
    but leaves the embedded etcd's peer port at 2380, so a second server on the machine would not start:
    etcd gets a config file with free ports of its own. The server is stopped when the block ends; its
    data stay in `base_dir`. `auto_compaction=False` keeps the server from merging (and indexing again)
    sealed segments on its own: a benchmark measures a collection that stays as it was built.
    """
    import milvus
    from milvus import MilvusServer, MilvusServerConfig

    base_dir.mkdir(parents=True, exist_ok=True)
    package = Path(milvus.__file__).parent / "data"
    client, peer = _free_port(), _free_port()
    etcd = base_dir / "etcd.yaml"
    etcd.write_text(
        f"name: milvus\nlisten-client-urls: http://127.0.0.1:{client}\nadvertise-client-urls: http://127.0.0.1:{client}\n"
        f"listen-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-cluster: milvus=http://127.0.0.1:{peer}\n"
    )
    template = base_dir / "milvus.yaml.template"  # the package's, with a setting for etcd's config file
    text = (package / "config.yaml.template").read_text()
    text = text.replace("etcd:\n", "etcd:\n  config:\n    path: {{ etcd_config_path }}\n", 1)
    if not auto_compaction:
        text = text.replace("enableAutoCompaction: true", "enableAutoCompaction: false", 1)
    template.write_text(text)
    config = MilvusServerConfig(template=str(template), etcd_port=client)
    config.glog_conf_file = str(package / "glog.conf")  # set only when no template is given (a bug of 2.3.5)
    server = MilvusServer(config)
    server.set_base_dir(str(base_dir))
    server.config.set("etcd_config_path", str(etcd))
    for node in NODES:
        server.config.set(f"{node}.ip", "127.0.0.1")
    try:
        server.start()  # waits until the server answers its health check
        yield f"127.0.0.1:{server.listen_port}"
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
