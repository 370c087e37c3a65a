"""int8 encoders: quantised from a catalog's photos, cached, named apart from float, close to float."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fashionrec.catalog import load_catalog
from fashionrec.encoders import Encoder, EncoderError, encoder_for_index, load_encoder
from fashionrec.encoders.int8 import CALIBRATION_IMAGES, calibration_pixels, int8_path
from fashionrec.encoders.weights import cache_dir
from fashionrec.images import open_image
from fashionrec.index import IndexStore
from fashionrec.search import Recommender

from conftest import run_cli

# Slow as a whole: quantising the model takes most of a minute on a busy machine.
pytestmark = pytest.mark.slow
INT8_NAME = "efficientnet-lite0:int8"


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Iterator[Path]:
    """A cache of its own (no int8 file yet) that shares the float ONNX file the `encoder` fixture exported."""
    fp32 = cache_dir() / "onnx" / f"efficientnet-lite0-{encoder.spec.weights_sha256[:12]}-{encoder.spec.size}.onnx"
    cache = tmp_path_factory.mktemp("cache")
    (cache / "onnx").mkdir()
    (cache / "onnx" / fp32.name).symlink_to(fp32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASHIONREC_CACHE", str(cache))
        yield cache / "onnx" / fp32.name


@pytest.fixture(scope="module")
def int8_index(int8_cache: Path, sample_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample catalog indexed by `fashionrec index --encoder efficientnet-lite0:int8`, as a user runs it."""
    out = tmp_path_factory.mktemp("int8") / "idx"
    result = run_cli("index", str(sample_catalog), "--encoder", INT8_NAME, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def stored_vectors(index: Path) -> dict[str, np.ndarray]:
    store = IndexStore.open(index)
    found = {item.id: vector for items, vectors, _ in store.load() for item, vector in zip(items, vectors, strict=True)}
    store.close()
    return found


def test_index_with_the_int8_encoder(
    int8_index: Path, int8_cache: Path, built_index: tuple[Path, object], catalog_photo: Path, encoder: Encoder
) -> None:
    assert int8_path(int8_cache, encoder.spec).is_file()  # quantised once, cached beside the float file
    recommender = Recommender.open(int8_index)
    assert recommender.encoder.id.startswith("efficientnet-lite0:int8@") and recommender.encoder.id != encoder.id
    assert recommender.similar_to_image(catalog_photo, k=1)[0].id == catalog_photo.stem  # the photo finds itself
    int8, fp32 = stored_vectors(int8_index), stored_vectors(built_index[0])
    assert int8.keys() == fp32.keys()
    cosines = np.array([float(int8[key] @ fp32[key]) / float(np.linalg.norm(int8[key])) for key in fp32])
    assert cosines.mean() > 0.97 and cosines.min() > 0.85, (cosines.mean(), cosines.min())
    np.testing.assert_allclose(np.linalg.norm(np.stack(list(int8.values())), axis=1), 1.0, atol=1e-2)


def test_the_cached_int8_model_is_reused_and_required(
    int8_index: Path, int8_cache: Path, catalog_photo: Path, encoder: Encoder
) -> None:
    spec = IndexStore.open(int8_index).manifest["encoder"]
    cached = load_encoder(INT8_NAME)  # no calibration needed any more
    assert cached.id == spec["id"] == encoder_for_index(spec).id
    image = open_image(catalog_photo)
    assert cached.embed([image]).shape == (1, 1280)
    with pytest.raises(EncoderError, match="onnx backend only"):
        load_encoder(INT8_NAME, backend="torch")
    int8_file = int8_path(int8_cache, encoder.spec)
    int8_file.rename(int8_cache.with_name("moved.onnx"))
    try:
        with pytest.raises(
            EncoderError, match="no int8 model of efficientnet-lite0@.*--encoder efficientnet-lite0:int8"
        ):
            encoder_for_index(spec)
    finally:
        int8_cache.with_name("moved.onnx").rename(int8_file)


def test_calibration_photos_do_not_depend_on_the_catalog_order(sample_catalog: Path) -> None:
    catalog = load_catalog(sample_catalog)
    reversed_catalog = type(catalog)(catalog.path, catalog.source, catalog.items[::-1])
    first = calibration_pixels(catalog, 64, "pad", count=20)
    assert first.shape == (20, 64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, calibration_pixels(reversed_catalog, 64, "pad", count=20))
    assert len(calibration_pixels(catalog, 32, "pad")) == min(CALIBRATION_IMAGES, len(catalog.items))
