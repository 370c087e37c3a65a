"""Index throughput (#16.1): `build_index` against a plain batched ONNX Runtime loop, fp32 and int8, one run.

The plain loop is what one writes without fashionrec: one process, one InferenceSession with default
options on the same ONNX file, and for each batch of 64 items: read the file, decode, fit to the square
input, run. `build_index` is fashionrec's own path (decoding worker processes, colour vectors, the
store's transactions), called in-process on the same subset at the same input size, with a fresh index.
Each pair runs back to back, so load from other work on the machine hits both alike; the figures are
images/s and the ratio index / plain loop.

Before that, where the time goes (bench/index_throughput.py's stage profile: read, decode, fit, colour,
model, store, one after the other in one process) and the model alone under ONNX Runtime settings:
intra-op threads (0: all cores), graph optimisation, batch size.

    python bench/throughput.py [--items 2000] [--size 224] [--results throughput]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from common import catalog_subset, int8_cache, write_results
from index_throughput import stage_profile

from fashionrec.build import build_index
from fashionrec.catalog import Catalog
from fashionrec.encoders import Encoder, load_encoder
from fashionrec.encoders.int8 import int8_path
from fashionrec.encoders.loader import onnx_cache_path
from fashionrec.images import decode, fit_square

BATCH = 64
NAME = "efficientnet-lite0"


def plain_loop(path: Path, catalog: Catalog, size: int) -> float:
    """Images/s of the plain loop: read, decode, fit, run, a batch at a time, one default session."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    for start in range(0, len(catalog.items), BATCH):
        batch = catalog.items[start : start + BATCH]
        pixels = [fit_square(decode(catalog.source.read(item.image), item.image), size, "pad") for item in batch]
        session.run(None, {"pixels": np.stack(pixels)})
    return len(catalog.items) / (time.perf_counter() - started)


def index_rate(catalog: Catalog, encoder: Encoder, work: Path) -> float:
    """Images/s of build_index (wall time of the call, fresh index)."""
    started = time.perf_counter()
    build_index(catalog, work / f"index-{time.monotonic_ns()}", encoder, progress=False)
    return len(catalog.items) / (time.perf_counter() - started)


def session_settings(path: Path, pixels: np.ndarray, rounds: int) -> dict[str, float]:
    """Images/s of the model alone under ONNX Runtime settings, all alternating round by round."""
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}
    settings = [(threads, level, batch) for threads in (0, 1) for level in levels for batch in (16, 64)]
    sessions = {}
    for threads, level, _ in settings:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = levels[level]
        sessions[threads, level] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    best = dict.fromkeys(settings, float("inf"))
    for _ in range(rounds):
        for threads, level, batch in settings:
            session = sessions[threads, level]
            started = time.perf_counter()
            for start in range(0, len(pixels), batch):
                session.run(None, {"pixels": pixels[start : start + batch]})
            best[threads, level, batch] = min(best[threads, level, batch], time.perf_counter() - started)
    return {f"threads={t} opt={o} batch={b}": round(len(pixels) / s, 1) for (t, o, b), s in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--profile-items", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", default="throughput")
    args = parser.parse_args()
    catalog = catalog_subset(args.items, seed=3)
    figures: dict[str, object] = {
        "command": (
            f"python bench/throughput.py --items {args.items} --size {args.size} "
            f"--profile-items {args.profile_items} --rounds {args.rounds}"
        ),
        "protocol": __doc__.split("\n\n")[1],
        "items": len(catalog.items),
        "size": args.size,
    }
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        int8_cache(work / "cache")
        encoders = {
            "fp32": load_encoder(NAME, size=args.size),
            "int8": load_encoder(f"{NAME}:int8", size=args.size, calibration=catalog),
        }
        fp32_file = onnx_cache_path(encoders["fp32"].spec)
        files = {"fp32": fp32_file, "int8": int8_path(fp32_file, encoders["fp32"].spec)}
        figures["stages"] = {
            precision: stage_profile(args.profile_items, encoder) for precision, encoder in encoders.items()
        }
        print("stages:", figures["stages"], flush=True)
        pixels = np.stack(
            [encoders["fp32"].prepare(decode(catalog.source.read(i.image), i.id)) for i in catalog.items[:128]]
        )
        figures["model_settings"] = {
            precision: session_settings(path, pixels, args.rounds) for precision, path in files.items()
        }
        print("model settings:", figures["model_settings"], flush=True)
        rates: dict[str, dict[str, float]] = {}
        for precision, encoder in encoders.items():
            plain = plain_loop(files[precision], catalog, args.size)
            index = index_rate(catalog, encoder, work)
            rates[precision] = {
                "plain_loop_images_per_s": round(plain, 1),
                "index_images_per_s": round(index, 1),
                "index_over_plain": round(index / plain, 2),
            }
            print(precision, rates[precision], flush=True)
        rates["int8_index_over_fp32_plain"] = round(  # type: ignore[assignment]
            rates["int8"]["index_images_per_s"] / rates["fp32"]["plain_loop_images_per_s"], 2
        )
        figures["end_to_end"] = rates
    write_results(args.results, figures)


if __name__ == "__main__":
    main()
