"""Runtimes: an encoder's model run by ONNX Runtime and OpenVINO (fast on CPU) or torch (the reference), and the export.

The model is defined in torch (the reference), exported once to ONNX and run with ONNX Runtime,
which is several times faster on CPU. The exported graph takes the uint8 pixels of the square
image, so normalisation happens inside the model and both paths share it exactly. Full batches
(a build, training's views) run in OpenVINO when it is installed: on this project's CPU it embeds a
batch of 64 1.3-1.5x faster than ONNX Runtime, with the same vectors, but takes 1.7x longer for one
image, so queries stay on ONNX Runtime (docs/performance.md); garment.py runs U2-Net-p's one photo in
OpenVINO, where it is faster. Neither torch, ONNX Runtime nor OpenVINO is imported until a model is built,
run or exported.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fashionrec.encoders.spec import EncoderSpec
from fashionrec.images import fit_square

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from openvino import CompiledModel

BATCH_SIZE = 64
RUNTIME_ENV = "FASHIONREC_RUNTIME"  # "onnxruntime": every batch on ONNX Runtime, even where OpenVINO is installed


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
    return session_runner(session, inputs, path, threads)


def onnx_session(path: Path, threads: int = 0) -> InferenceSession:
    """An ONNX Runtime session of a model file; `threads` cores per call (0: all)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False  # the arena keeps its peak allocation: ~30 MB more to serve
    options.intra_op_num_threads = threads
    # idle threads sleep instead of spinning: after a query's embedding they spun ~10 ms on both cores, and
    # U2-Net-p's next mask took 36 ms instead of 23; a build's decoding processes get the cores too (int8 builds
    # 1.2x faster, float level; docs/shoppers-photos.md, section 10)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=onnx_providers())


def session_runner(
    session: InferenceSession,
    inputs: Inputs = pixel_inputs,
    path: Path | None = None,
    threads: int = 0,
    openvino_batch: int = BATCH_SIZE,
    precision: str = "f32",
) -> Callable[[np.ndarray], np.ndarray]:
    """The session as a function of its input; batches of `openvino_batch` go to OpenVINO on the float model
    file `path` (in `precision`, see OpenVinoModel), and fall back to the session where OpenVINO cannot run them.

    An encoder's full batches only: OpenVINO took 1.7x longer than ONNX Runtime for one image, and both give
    the same vectors (1e-6). Never int8 models (no `path`): OpenVINO 2026.4 crashed the process on a trained
    encoder's int8 file, and its int8 vectors differ from ONNX Runtime's by ~0.5% (docs/performance.md).
    """
    openvino = OpenVinoModel(path, threads, precision) if path is not None and openvino_wanted(session) else None

    def run(pixels: np.ndarray) -> np.ndarray:
        feed = inputs(pixels)
        if openvino is not None and len(pixels) == openvino_batch:
            vectors = openvino.run(feed)
            if vectors is not None:
                return vectors
        return session.run(None, feed)[0]

    return run


def openvino_wanted(session: InferenceSession) -> bool:
    """OpenVINO unless the session runs on a GPU, $FASHIONREC_RUNTIME is "onnxruntime", or it is not installed."""
    if os.environ.get(RUNTIME_ENV, "").lower() == "onnxruntime" or "CUDAExecutionProvider" in session.get_providers():
        return False
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoModel:
    """One model file in OpenVINO's CPU plugin, compiled on first use for each input shape (static shapes:
    ~10% faster than a dynamic batch). If the model does not compile or run there, `run` answers None from
    then on and the caller keeps ONNX Runtime.

    `precision` "f32" computes as ONNX Runtime does (the same outputs to 1e-6), even where the CPU has bf16
    (AVX512_BF16, AMX), which OpenVINO would otherwise pick: there bf16 moved an encoder's vectors by up to
    0.02, so a build's would not match its queries. "bf16" asks for it where the CPU computes it natively
    (f32 elsewhere): for a model whose output tolerates it, about twice as fast.
    """

    def __init__(self, path: Path, threads: int, precision: str = "f32") -> None:
        self.path = path
        self.threads = threads
        self.precision = precision
        self._compiled: dict[tuple[tuple[int, ...], ...], CompiledModel] = {}
        self._failed = False
        self._lock = threading.Lock()  # one compile; an infer request per call keeps threads apart

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray | None:
        compiled = self._compile(feed)
        if compiled is None:
            return None
        try:
            return compiled.create_infer_request().infer(feed)[0]
        except Exception:  # noqa: BLE001 - e.g. an input this model cannot take here: ONNX Runtime can
            self._failed = True
            return None

    def _compile(self, feed: dict[str, np.ndarray]) -> CompiledModel | None:
        shapes = tuple(value.shape for value in feed.values())
        with self._lock:
            if shapes not in self._compiled and not self._failed:
                try:
                    import openvino

                    core = openvino.Core()
                    model = core.read_model(str(self.path))
                    model.reshape({name: list(value.shape) for name, value in feed.items()})
                    precision = self.precision if cpu_has_bf16() else "f32"
                    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
                    if self.threads:
                        config["INFERENCE_NUM_THREADS"] = self.threads
                    self._compiled[shapes] = core.compile_model(model, "CPU", config)
                except Exception:  # noqa: BLE001 - any failure of the optional runtime falls back to ONNX Runtime
                    self._failed = True
            return None if self._failed else self._compiled[shapes]


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16, AMX), as OpenVINO's CPU plugin sees it; False
    without OpenVINO. Elsewhere bf16 is emulated, slower than f32."""
    try:
        import openvino

        return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - no OpenVINO, or no CPU plugin: say no
        return False


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
