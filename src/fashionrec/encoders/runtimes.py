"""Runtimes: an encoder's model run by ONNX Runtime (fast on CPU) or torch (the reference), and the export.

The model is defined in torch (the reference), exported once to ONNX and run with ONNX Runtime,
which is several times faster on CPU. The exported graph takes the uint8 pixels of the square
image, so normalisation happens inside the model and both paths share it exactly. Neither torch
nor ONNX Runtime is imported until a model is built, run or exported.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fashionrec.encoders.spec import EncoderSpec
from fashionrec.images import fit_square

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

BATCH_SIZE = 64


class Encoder:
    """Embeds images with one model; `spec.id` names exactly what produced the vectors."""

    def __init__(self, spec: EncoderSpec, run: Callable[[np.ndarray], np.ndarray], backend: str) -> None:
        self.spec = spec
        self.backend = backend
        self._run = run

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def dim(self) -> int:
        return self.spec.dim

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The square uint8 pixels this encoder's model takes for one image."""
        return fit_square(image, self.spec.size, self.spec.fit)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """[N,S,S,3] uint8 -> [N,D] float32, unit length, in batches."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        parts = [self._run(pixels[i : i + BATCH_SIZE]) for i in range(0, len(pixels), BATCH_SIZE)]
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed decoded RGB images (see images.decode)."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_pixels(np.stack([self.prepare(image) for image in images]))


Inputs = Callable[[np.ndarray], dict[str, np.ndarray]]


def pixel_inputs(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The model's inputs for a batch of square uint8 pixels: a base encoder takes the pixels alone."""
    return {"pixels": np.ascontiguousarray(pixels, dtype=np.uint8)}


def torch_runner(net: object, inputs: Inputs = pixel_inputs) -> Callable[[np.ndarray], np.ndarray]:
    """The torch model as a function of pixels, on the GPU when torch sees one."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = net.to(device)  # type: ignore[attr-defined]

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = {name: torch.from_numpy(value).to(device) for name, value in inputs(pixels).items()}
            return net(**batch).cpu().numpy()  # type: ignore[operator]

    return run


def onnx_runner(
    make_net: Callable[[], object], path: Path, size: int, threads: int = 0, inputs: Inputs = pixel_inputs
) -> Callable[[np.ndarray], np.ndarray]:
    """The model as a function of pixels, from its ONNX file (exported from `make_net` if missing or damaged)."""
    if not path.is_file():
        export_onnx(make_net(), path, size, inputs)
    try:
        session = onnx_session(path, threads)
    except Exception:  # a cache file damaged on disk: export it again
        export_onnx(make_net(), path, size, inputs)
        session = onnx_session(path, threads)
    return session_runner(session, inputs)


def onnx_session(path: Path, threads: int = 0) -> InferenceSession:
    """An ONNX Runtime session of a model file; `threads` cores per call (0: all)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False  # the arena keeps its peak allocation: ~30 MB more to serve
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=onnx_providers())


def session_runner(session: InferenceSession, inputs: Inputs = pixel_inputs) -> Callable[[np.ndarray], np.ndarray]:
    def run(pixels: np.ndarray) -> np.ndarray:
        return session.run(None, inputs(pixels))[0]

    return run


def onnx_providers() -> list[str]:
    """CUDA first when this onnxruntime has it (the onnxruntime-gpu package), else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def export_onnx(net: object, path: Path, size: int, inputs: Inputs = pixel_inputs) -> None:
    """Export the torch model once; written to a temp file and renamed, so a cache file is whole.

    The graph's inputs are those `inputs` gives for a batch of pixels, in its order and by its names.
    """
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    example = inputs(np.zeros((1, size, size, 3), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,  # type: ignore[arg-type]
            tuple(torch.from_numpy(value) for value in example.values()),
            str(tmp),
            input_names=list(example),
            output_names=["vectors"],
            dynamic_axes={name: {0: "batch"} for name in [*example, "vectors"]},
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, path)
