"""int8 encoders: the ONNX model statically quantised (QDQ, per-channel weights) by ONNX Runtime.

Why static: ONNX Runtime's dynamic quantisation turns the convolutions into ConvInteger, which is
slower than float on CPU and moved EfficientNet-Lite0's vectors far from float's (mean cosine 0.72);
static QDQ with activation ranges calibrated on catalog photos keeps them close (docs/performance.md).

An int8 encoder is named by its float one plus ":int8" ("efficientnet-lite0:int8", "models/shop:int8").
Its quantised file is cached beside the float ONNX file and made once, from CALIBRATION_IMAGES photos
of the first catalog it is asked for with; its encoder id hashes that file, so an index never mixes
vectors of two calibrations, nor int8 vectors with float ones.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from fashionrec.catalog import Catalog
from fashionrec.encoders.runtimes import Encoder, Inputs, export_onnx, onnx_session, session_runner
from fashionrec.encoders.spec import EncoderError, EncoderSpec
from fashionrec.encoders.weights import file_sha256
from fashionrec.images import Fit, ImageError, decode, fit_square

INT8 = ":int8"
CALIBRATION_IMAGES = 300
CALIBRATION_BATCH = 32


def split_int8(name: str) -> tuple[str, bool]:
    """An encoder name without its ":int8" suffix, and whether it had one."""
    return (name.removesuffix(INT8), True) if name.endswith(INT8) else (name, False)


def int8_path(fp32: Path, spec: EncoderSpec) -> Path:
    """Where the quantised model of float encoder `spec` (ONNX file `fp32`) lives: beside it, named by its hash.

    By its hash, so a model directory trained again never runs the int8 file of its former adapter.
    """
    return fp32.with_name(f"{fp32.stem}-{spec.weights_sha256[:12]}-int8.onnx")


def calibration_pixels(catalog: Catalog, size: int, fit: Fit, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """[count, size, size, 3] uint8: catalog photos chosen by a hash of their id, as the model takes them.

    By hash, so the choice does not depend on the catalog's order; unreadable images are passed over.
    """
    order = sorted(catalog.items, key=lambda item: hashlib.blake2b(item.id.encode(), digest_size=8).digest())
    pixels = []
    for item in order:
        try:
            pixels.append(fit_square(decode(catalog.source.read(item.image), item.image), size, fit))
        except (OSError, ImageError):
            continue
        if len(pixels) == count:
            break
    if not pixels:
        raise EncoderError(f"{catalog.path}: no readable image to calibrate the int8 encoder on")
    return np.stack(pixels)


def quantise(fp32: Path, out: Path, calibration: np.ndarray, inputs: Inputs) -> None:
    """Static QDQ quantisation of `fp32` into `out`, activation ranges from `calibration`; written atomically."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [inputs(calibration[i : i + CALIBRATION_BATCH]) for i in range(0, len(calibration), CALIBRATION_BATCH)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantise-") as work:
        prepared, quantised = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantised),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        os.replace(quantised, out)


def int8_encoder(
    spec: EncoderSpec,
    fp32: Path,
    make_net: Callable[[], object],
    inputs: Inputs,
    threads: int,
    calibration: Catalog | None,
) -> Encoder:
    """The int8 encoder of a float one whose ONNX file is `fp32`; quantised first if not cached yet."""
    path = int8_path(fp32, spec)
    if not path.is_file():
        if calibration is None:
            raise EncoderError(
                f"no int8 model of {spec.id} on this machine ({path}): it is calibrated on a catalog's photos, "
                f"so make it with `fashionrec index CATALOG --encoder {spec.model_dir or spec.name}{INT8} ...`"
            )
        if not fp32.is_file():
            export_onnx(make_net(), fp32, spec.size, inputs)
        quantise(fp32, path, calibration_pixels(calibration, spec.size, spec.fit), inputs)
    try:
        session = onnx_session(path, threads)
    except Exception as error:
        raise EncoderError(f"{path}: unreadable int8 model ({error}); delete it to quantise again") from None
    weights = hashlib.sha256(f"{spec.weights_sha256}:int8:{file_sha256(path)}".encode()).hexdigest()
    int8_spec = replace(spec, name=spec.name + INT8, weights_sha256=weights)
    return Encoder(int8_spec, session_runner(session, inputs), "onnx")
