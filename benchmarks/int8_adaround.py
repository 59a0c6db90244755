"""AdaRound (Nagel et al. 2020) vs nearest rounding for EfficientNet-Lite0's int8 weights: agreement with fp32, cost.

Same crops and calibration as ``python -m benchmarks int8_sensitivity --model lite0`` (96 calibration crops
seed 1, 120 agreement crops seed 2); both rows are bias-corrected (the product recipe). Agreement is given on all crops (the
target), where fp32's top-1 probability is ≥ 0.3, and, as an extra statistic, on the fp32-stable crops (fp32's
top-1 unchanged under ±1 grey level of uniform noise). AdaRound leaves the graph's structure as it is (only which
integers the int8 weights hold changes), so the int8 speed is the product recipe's. The rows are stored under
``adaround``, with the environment they were measured in, in benchmarks/results/int8_sensitivity.json
and rendered in its .md.

Run: python -m benchmarks int8_adaround [--scopes off depthwise] [--threads 1]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.export_latency import photo_crops
from benchmarks.int8_sensitivity import GREY_LEVEL, RESULTS_NAME, agreement, logits, stored, table
from inspectnet import load_model
from inspectnet.export.int8 import ADAROUND_SCOPES, quantize_int8
from inspectnet.export.onnx import export_onnx
from inspectnet.runtime.classifier import make_session


def measure(scopes: list[str], threads: int, work: Path) -> list[dict]:
    zm = load_model("shipped:efficientnet_lite0")
    cal, ev = photo_crops(zm, 12, seed=1)[0], photo_crops(zm, 15, seed=2)[0]
    fp32 = work / "fp32.onnx"
    export_onnx(zm, fp32, latency=False)
    s32 = make_session(fp32, threads=threads)
    l32 = logits(s32, ev)
    noisy = ev + np.random.default_rng(0).uniform(-GREY_LEVEL, GREY_LEVEL, ev.shape).astype(np.float32)
    stable = logits(s32, noisy).argmax(1) == l32.argmax(1)
    rows = []
    for scope in scopes:
        started = time.perf_counter()
        quantize_int8(fp32, work / "int8.onnx", cal, adaround=scope, calibration_cache=work / "ranges.json")
        seconds = time.perf_counter() - started
        l8 = logits(make_session(work / "int8.onnx", threads=threads), ev)
        same = l32.argmax(1) == l8.argmax(1)
        rows.append({"adaround": scope, **agreement(l32, l8), "export_seconds": round(seconds, 1),
                     "agreement_fp32_stable": round(float(same[stable].mean()), 4), "fp32_stable": int(stable.sum())})
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scopes", nargs="+", choices=ADAROUND_SCOPES, default=["off", "depthwise"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    run = harness.start()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="inspectnet-adaround-") as tmp:
        rows = measure(args.scopes, args.threads, Path(tmp))
    doc = stored()
    doc["adaround"] = {"threads": args.threads, "rows": rows, "environment": harness.finish(run)}
    harness.write_results(RESULTS_NAME, doc, table(doc), run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
