"""The encoder: ONNX Runtime agrees with the torch reference; ids and the ONNX cache."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from fashionrec.encoders import Encoder, EncoderError, EncoderSpec, encoder_for_index, load_encoder
from fashionrec.images import decode

from conftest import SHARED_ZIP, sample_rows


@pytest.fixture(scope="module")
def real_images() -> list:
    _, rows = sample_rows(16, seed=3)
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        return [decode(archive.read(f"images/{r[0]}.jpg"), r[0]) for r in rows]


def test_onnx_matches_the_torch_reference(encoder: Encoder, real_images: list) -> None:
    reference = load_encoder(backend="torch")
    assert reference.id == encoder.id
    fast, slow = encoder.embed(real_images), reference.embed(real_images)
    assert fast.shape == slow.shape == (16, 1280) and fast.dtype == np.float32
    assert np.abs(fast - slow).max() < 1e-4
    assert np.einsum("nd,nd->n", fast, slow).min() > 0.9999


def test_vectors_are_unit_length_and_distinguish_products(encoder: Encoder, real_images: list) -> None:
    vectors = encoder.embed(real_images)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert (similarity[~np.eye(16, dtype=bool)] < 0.999).all()


def test_id_names_weights_and_preprocessing(encoder: Encoder) -> None:
    assert encoder.id.startswith("efficientnet-lite0@579344248a93/pad160")
    spec = EncoderSpec.from_dict(encoder.spec.to_dict())
    assert spec == encoder.spec
    other = EncoderSpec(spec.name, spec.weights_sha256, 224, "crop", spec.dim)
    assert other.id != spec.id


def test_index_spec_with_other_weights_is_refused(encoder: Encoder) -> None:
    tampered = encoder.spec.to_dict() | {"weights_sha256": "0" * 64}
    with pytest.raises(EncoderError, match="built with encoder efficientnet-lite0@000000000000"):
        encoder_for_index(tampered)
    with pytest.raises(EncoderError, match="unknown encoder"):
        load_encoder("resnet-9000")


@pytest.mark.slow
def test_onnx_file_is_cached_and_a_damaged_one_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_images: list, encoder: Encoder
) -> None:
    monkeypatch.setenv("FASHIONREC_CACHE", str(tmp_path))
    load_encoder(size=96)
    (cached,) = (tmp_path / "onnx").glob("*.onnx")
    stamp = cached.stat().st_mtime_ns
    load_encoder(size=96)
    assert cached.stat().st_mtime_ns == stamp  # reused, not exported again
    cached.write_bytes(b"half a file")
    rebuilt = load_encoder(size=96)
    assert cached.stat().st_size > 1_000_000
    assert rebuilt.embed(real_images[:2]).shape == (2, 1280)


def test_full_batches_run_in_openvino_with_the_same_vectors(
    encoder: Encoder, real_images: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build's full batches go to OpenVINO (a dependency); one image stays on ONNX Runtime; both agree."""
    from fashionrec.encoders import runtimes

    pixels = np.stack([encoder.prepare(image) for image in real_images * 4])  # 64: one full batch
    assert len(pixels) == runtimes.BATCH_SIZE
    calls: list[int] = []
    original = runtimes.OpenVinoModel.run

    def counted(self: runtimes.OpenVinoModel, feed: dict) -> np.ndarray | None:
        calls.append(len(next(iter(feed.values()))))
        return original(self, feed)

    monkeypatch.setattr(runtimes.OpenVinoModel, "run", counted)
    openvino = load_encoder()
    bulk, one = openvino.embed_pixels(pixels), openvino.embed_pixels(pixels[:1])
    assert calls == [64]  # the single image did not reach OpenVINO
    monkeypatch.setenv(runtimes.RUNTIME_ENV, "onnxruntime")
    onnxruntime = load_encoder().embed_pixels(pixels)
    assert calls == [64] and openvino.id == encoder.id
    assert np.abs(bulk - onnxruntime).max() < 1e-4
    assert np.abs(one - onnxruntime[:1]).max() < 1e-4


def test_a_model_openvino_cannot_read_falls_back_to_onnx_runtime(encoder: Encoder, tmp_path: Path) -> None:
    from fashionrec.encoders.runtimes import OpenVinoModel

    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not a model")
    model = OpenVinoModel(broken, threads=0)
    feed = {"pixels": np.zeros((2, encoder.spec.size, encoder.spec.size, 3), np.uint8)}
    assert model.run(feed) is None and model.run(feed) is None
