"""ResNet18 on mnist5k, k1 = k2 = 5: decomposed head, noise ablation, 1-epoch head retraining, slimming,
k1/k2 sweep, and the cost of fitting the influence map against the probe pass that produced its record.

Run: python -m benchmarks decompose_resnet18 [--model DIR] [--work DIR]

``--model`` is a ResNet18 trained on mnist5k:train (trained here with the known recipe when missing:
3 epochs, sgd lr .05 cosine, batch 64, 28 px, 1 channel). Writes
benchmarks/results/decompose_resnet18.{json,md} and the sweep plot decompose_resnet18_sweep.png.
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from benchmarks import harness
from inspectnet import load_data, load_model
from inspectnet.analysis.heads.influence import fit_influence
from inspectnet.pipelines.decompose import run_decomposition
from inspectnet.probe.recorder import run_probe
from inspectnet.training.loop import TrainConfig, train


def trained_model(path: Path):
    if not (path / "config.json").exists():
        zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=28)
        train(zm, load_data("mnist5k:train", zm.transform()), path, TrainConfig(epochs=3, batch_size=64, lr=0.05))
    return load_model(str(path))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/bench/decompose_r18_model")
    ap.add_argument("--work", default="runs/bench/decompose_r18")
    args = ap.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(1)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    zm = trained_model(Path(args.model))
    t0 = time.perf_counter()
    train_rec = run_probe(zm, load_data("mnist5k:train", zm.transform()), "layer4", work / "rec_train", batch_size=100)
    probe_s = time.perf_counter() - t0
    test_rec = run_probe(zm, load_data("mnist5k:test", zm.transform()), "layer4", work / "rec_test", batch_size=100)
    fit = harness.alternate({"fit_influence": lambda: fit_influence(train_rec, 5, 5)}, 5, warmup=0)
    fit_s = fit["fit_influence"]["median_s"]
    doc = run_decomposition(train_rec, test_rec, work / "out", zm=zm, k1=5, k2=5, retrain_epochs=1, slim=True,
                            sweep_k=[1, 2, 5, 10, 20, 50], data="mnist5k:test")
    keys = ("k1", "k2", "accuracy_full", "accuracy_decomposed", "rA", "agreement", "union_size", "feature_dim",
            "head_macs_full", "head_macs_decomposed", "noise_ablation", "accuracy_retrained", "retrain_epochs",
            "accuracy_model_on_data", "slim", "sweep")
    result = {k: doc.get(k) for k in keys}
    result["timing"] = {"probe_pass_train_s": probe_s, "fit_influence_s": fit_s, "fit_over_probe": fit_s / probe_s,
                        "fit_influence_iqr_s": fit["fit_influence"]["iqr_s"],
                        "num_train_samples": len(train_rec), "threads": 1}
    # the scratch folder is no part of the result: the JSON names it by its option
    result = json.loads(json.dumps(result).replace(json.dumps(str(work))[1:-1], "<--work>"))
    s = doc["slim"]
    na = doc["noise_ablation"]
    md = [
        "# ResNet18 / mnist5k, decomposed head (k1 = k2 = 5)", "",
        "Reproduce: `python -m benchmarks decompose_resnet18` (CPU, 1 thread).", "",
        "| metric | value |", "|---|---|",
        f"| A_f (full head, mnist5k:test) | {doc['accuracy_full']:.4f} |",
        f"| A_d (decomposed) | {doc['accuracy_decomposed']:.4f} |",
        f"| rA = A_d / A_f | {doc['rA']:.4f} |",
        f"| top-1 agreement with the full model | {doc['agreement']:.4f} |",
        f"| A_d after 1 epoch of head retraining | {doc['accuracy_retrained']:.4f} |",
        f"| saved model, end to end on mnist5k:test | {doc['accuracy_model_on_data']['accuracy']:.4f} |",
        f"| noise on the {na['num_influential']} influential features (full head) | {na['influential']:.4f} |",
        f"| noise on {na['num_non_influential']} non-influential features (full head) | {na['non_influential']:.4f} |",
        f"| union of S_c | {doc['union_size']} / {doc['feature_dim']} |",
        f"| head MACs | {doc['head_macs_full']} -> {doc['head_macs_decomposed']} |",
        f"| slimmed ({s.get('method')}): model MACs | {s.get('macs_before')} -> {s.get('macs_after')} |",
        f"| slimmed: parameters | {s.get('params_before')} -> {s.get('params_after')} |",
        f"| slimmed: logits max abs diff vs decomposed | {s.get('logits_max_abs_diff', float('nan')):.2e} |",
        f"| slimmed / decomposed latency (batch {s.get('latency_batch')}) | {s.get('latency_ratio', float('nan')):.3f} |",
        f"| probe pass over {len(train_rec)} train images | {probe_s:.2f} s |",
        f"| fit influence map (median of 5) | {fit_s * 1000:.1f} ms ({100 * fit_s / probe_s:.3f} % of the probe pass) |",
        "", "## k1 / k2 sweep (paper Fig. 3)", "", (work / "out" / "sweep.md").read_text(),
        "![sweep](decompose_resnet18_sweep.png)", "",
    ]
    harness.write_results("decompose_resnet18", result, "\n".join(md), run)
    shutil.copy(work / "out" / "sweep.png", harness.RESULTS / "decompose_resnet18_sweep.png")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
