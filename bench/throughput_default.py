"""#16.1 as the issue measured it: `fashionrec index` with its defaults against a plain ONNX Runtime loop.

The plain loop is bench/throughput.py's: one process, one default InferenceSession on EfficientNet-Lite0
at 224 px, for each batch of 64 items read, decode, fit, run. fashionrec is what `fashionrec index
CATALOG` runs, in-process: the encoder loaded (model load counted) and `build_index` with every default
(160 px, decoding worker processes, colour vectors, the store), full batches in OpenVINO; and the same
with OpenVINO off (`FASHIONREC_RUNTIME=onnxruntime`), which is what the build was before it. The three
take turns round by round, so load from other work weighs on each alike; figures are images/s and the
ratios over the plain loop. A subset pays start-up (worker processes, model load) that the whole
catalog amortises, so both are measured.

    python bench/throughput_default.py [--items 5000 44441] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import catalog_subset, write_results
from throughput import plain_loop

from fashionrec.build import build_index
from fashionrec.catalog import Catalog
from fashionrec.encoders import load_encoder
from fashionrec.encoders.loader import onnx_cache_path
from fashionrec.encoders.runtimes import RUNTIME_ENV

PLAIN_SIZE = 224


def fashionrec_rate(catalog: Catalog, work: Path, runtime: str) -> float:
    """Images/s of `fashionrec index` with its defaults: the encoder's load and the build, fresh index."""
    os.environ[RUNTIME_ENV] = runtime
    started = time.perf_counter()
    encoder = load_encoder()
    build_index(catalog, work / f"index-{time.monotonic_ns()}", encoder, progress=False)
    return len(catalog.items) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[5000, 44441])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--results", default="throughput_default")
    args = parser.parse_args()
    plain_file = onnx_cache_path(load_encoder(size=PLAIN_SIZE).spec)  # exported into the cache if missing
    figures: dict[str, object] = {
        "command": f"python bench/throughput_default.py --items {' '.join(map(str, args.items))} "
        f"--rounds {args.rounds}",
        "protocol": __doc__.split("\n\n")[1],
    }
    for items in args.items:
        catalog = catalog_subset(items, seed=3)
        rates: dict[str, list[float]] = {"plain_loop_224": [], "fashionrec_openvino": [], "fashionrec_onnxruntime": []}
        with tempfile.TemporaryDirectory() as directory:
            for round_ in range(args.rounds):
                rates["plain_loop_224"].append(plain_loop(plain_file, catalog, PLAIN_SIZE))
                for runtime in ("openvino", "onnxruntime"):
                    work = Path(directory) / f"{runtime}-{round_}"
                    rates[f"fashionrec_{runtime}"].append(fashionrec_rate(catalog, work, runtime))
                print(items, {name: [round(r, 1) for r in values] for name, values in rates.items()}, flush=True)
        best = {name: max(values) for name, values in rates.items()}
        figures[str(len(catalog.items))] = {
            "images_per_s_each_round": {name: [round(r, 1) for r in values] for name, values in rates.items()},
            "best_images_per_s": {name: round(rate, 1) for name, rate in best.items()},
            "fashionrec_over_plain": round(best["fashionrec_openvino"] / best["plain_loop_224"], 2),
            "fashionrec_without_openvino_over_plain": round(best["fashionrec_onnxruntime"] / best["plain_loop_224"], 2),
            "openvino_over_onnxruntime": round(best["fashionrec_openvino"] / best["fashionrec_onnxruntime"], 2),
        }
        print(figures[str(len(catalog.items))], flush=True)
        write_results(args.results, figures)


if __name__ == "__main__":
    main()
