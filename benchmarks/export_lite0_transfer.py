"""EfficientNet-Lite0 (real ImageNet weights) 10-class MNIST transfer model: dense vs decomposed + slimmed, in ONNX Runtime.

The command-line pipeline of the gallery model, step by step (each an ``inspectnet`` command in a fresh
process, outputs under ``--work``): transfer-train a new 10-class head on ``mnist5k:train`` at 64 px, probe
the penultimate features of the train and test splits, decompose the head (k1 = k2 = 5) with 2 epochs of
head retraining and slimming, and export both the dense and the slimmed model with int8 (calibrated on
``mnist5k:train``, top-1 agreement and accuracy on ``mnist5k:test``). torch and ONNX Runtime run one
intra-op thread each (the export's latency measurement).

Run: python -m benchmarks export_lite0_transfer [--work runs/bench/lite0_transfer]
(writes benchmarks/results/export_lite0_transfer.{json,md}: both export reports and the decomposition).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks import harness

TRAIN = ["train", "shipped:efficientnet_lite0", "mnist5k:train", "--num-classes", "10", "--reset-head",
         "--input-size", "64", "--epochs", "1", "--lr", "0.02", "--batch-size", "32"]


def steps(work: Path) -> list[list[str]]:
    """The pipeline's commands (arguments of ``inspectnet``), in order."""
    w = {name: str(work / name) for name in ("lite0_mnist", "rec_train", "rec_test", "dec", "full.onnx", "slim.onnx")}
    export = ["--int8", "--calibration", "mnist5k:train", "--eval-data", "mnist5k:test", "--json", "--force"]
    return [[*TRAIN, "--out", w["lite0_mnist"]],
            ["probe", w["lite0_mnist"], "mnist5k:train", "--layers", "pre_logits", "--out", w["rec_train"]],
            ["probe", w["lite0_mnist"], "mnist5k:test", "--layers", "pre_logits", "--out", w["rec_test"]],
            ["decompose", "--fit", w["rec_train"], "--eval", w["rec_test"], "--model", w["lite0_mnist"], "--k1", "5",
             "--k2", "5", "--retrain-epochs", "2", "--slim", "--out", w["dec"]],
            ["export", w["lite0_mnist"], "--out", w["full.onnx"], *export],
            ["export", str(work / "dec" / "slim_model"), "--out", w["slim.onnx"], *export]]


def row(name: str, r: dict, batch: str) -> str:
    lat, q = r["latency_ms"], r["int8"]
    t, f, i = lat["torch_eager"][batch], lat["ort_fp32"][batch], lat["ort_int8"][batch]
    tail = (f"{q['top1_agreement_with_fp32']:.1%} | {q.get('accuracy_fp32', float('nan')):.1%} / "
            f"{q.get('accuracy_int8', float('nan')):.1%} | {r['size_bytes'] / 1e6:.1f} / {q['size_bytes'] / 1e6:.1f}"
            if batch == "1" else " | | ")
    return f"| {name} | {batch} | {t:.2f} | {f:.3f} | {i:.3f} | {t / f:.1f}× | {f / i:.2f}× | {tail} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/bench/lite0_transfer")
    args = ap.parse_args(argv)
    run = harness.start()
    work = Path(args.work)
    for cmd in steps(work):
        print("inspectnet " + " ".join(cmd), flush=True)
        subprocess.run([sys.executable, "-m", "inspectnet", *cmd], check=True, cwd=harness.ROOT,
                       stdout=subprocess.DEVNULL if cmd[0] != "decompose" else None)
    reports = {k: json.loads((work / f"{k}.export.json").read_text()) for k in ("full", "slim")}
    dec = json.loads((work / "dec" / "decomposition.json").read_text())
    keep = ("k1", "k2", "accuracy_full", "accuracy_decomposed", "accuracy_retrained", "union_size", "slim")
    doc = {"commands": ["inspectnet " + " ".join(c) for c in steps(work)], "decomposition":
           {k: dec[k] for k in keep if k in dec}, "full": reports["full"], "slim": reports["slim"]}
    d = doc["decomposition"]
    lines = ["# EfficientNet-Lite0 (real ImageNet weights) 10-class MNIST transfer model: dense vs decomposed + "
             "slimmed, in ONNX Runtime", "", "ORT and torch at 1 intra-op thread each, engines timed by `inspectnet "
             "export`; latencies in ms per batch. The pipeline:", "", "```bash", *doc["commands"], "```", "",
             f"Decomposition (k1 = k2 = 5): A_f {d.get('accuracy_full', float('nan')):.3f}, A_d "
             f"{d.get('accuracy_decomposed', float('nan')):.3f}, after 2 epochs of head retraining "
             f"{d.get('accuracy_retrained', float('nan')):.3f}.", "",
             "| model | batch | torch eager | ORT fp32 | ORT int8 | ORT fp32 vs torch | int8 vs fp32 | int8 top-1 "
             "agreement (test digits) | accuracy fp32 / int8 | file MB fp32 / int8 |",
             "|---|---|---|---|---|---|---|---|---|---|",
             *[row(name, reports[k], b) for k, name in (("full", "dense transfer model"), ("slim", "decomposed + slimmed"))
               for b in ("1", "32")], "",
             "fp32 parity (gate): max |Δ| " + " / ".join(f"{reports[k]['parity']['max_abs_diff']:.1e}" for k in reports)
             + " (dense / slimmed). Targets: ORT ≥ 2× torch at batch 1, int8 ≥ 1.5× fp32, int8 agreement ≥ 99 %."]
    harness.write_results("export_lite0_transfer", doc, "\n".join(lines), run)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
