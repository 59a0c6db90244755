"""Decomposing the Deep, Table 8: Gaussian noise on the influential features of the *original* model
(the full head) against noise on as many non-influential ones, in two settings.

1. The paper's small setting, here: ResNet18 trained on mnist5k (10 classes), S_c fitted with
   k1 = k2 = 5 on mnist5k:train, evaluated on mnist5k:test. The union of the S_c is a small part of
   the 512 features, and the other features still classify.
2. Where the paper's effect is expected: the shipped EfficientNet-Lite0 (real ImageNet weights) in
   its own 1000-class label space on real photos: the ``photos`` data source (seeded crops of the
   four scikit-image photos with a known ImageNet class, labelled by WordNet id: chelsea tabby 281,
   coffee espresso 967, rocket missile 657, camera tripod 872). S_c is fitted with the paper's
   ImageNet k1 = k2 = 50 on ``photos:train`` and the ablation runs on ``photos:test`` (the source's
   split: no crop in both). Accuracy is top-1 over all 1000 classes against these labels (Lite0
   calls the whole chelsea photo a tiger cat, 282, so part of the chelsea crops count as errors).

Each ablation replaces the chosen features of every test sample with N(0, 1) draws
(:func:`inspectnet.analysis.heads.decompose.noise_ablation`); the non-influential features are a
random subset of the same size; both are redrawn for each of the noise seeds. Mean ± std over the
seeds, and a paired comparison (bootstrap interval, exact sign-flip test).

Run: python -m benchmarks decompose_noise [--seeds 5] [--crops 800]
(writes benchmarks/results/decompose_noise.{json,md}).
"""

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from benchmarks.decompose_resnet18 import trained_model
from benchmarks.paired_stats import describe, mean_std, paired
from inspectnet import load_data, load_model
from inspectnet.analysis.heads.decompose import linear_params, noise_ablation
from inspectnet.analysis.heads.influence import fit_influence
from inspectnet.data.sources import LABELLED_PHOTOS
from inspectnet.probe.recorder import run_probe

PAPER = {"ResNet20 / CIFAR-10": (91.17, 48.97, 82.24), "ResNet50 / ImageNet": (74.55, 12.52, 74.40)}


def ablation(zm, train_rec, test_rec, k: int, seeds: list[int]) -> dict:
    imap = fit_influence(train_rec, k, k)
    w, b = linear_params(zm.head)
    runs = [noise_ablation(w.double(), None if b is None else b.double(), imap, test_rec, seed=s) for s in seeds]
    infl = [100 * r["influential"] for r in runs]
    non = [100 * r["non_influential"] for r in runs]
    preds = np.asarray(test_rec.logits).argmax(1)
    return {"k1": k, "k2": k, "classes_fitted": imap.num_classes - len(imap.empty_classes),
            "union": runs[0]["num_influential"], "feature_dim": imap.dim,
            "accuracy_full": 100 * float((preds == np.asarray(test_rec.labels)).mean()),
            "influential": infl, "non_influential": non, "influential_mean_std": mean_std(infl),
            "non_influential_mean_std": mean_std(non), "paired_non_minus_influential": paired(non, infl),
            "test_samples": len(test_rec), "noise_seeds": seeds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/bench/decompose_noise")
    ap.add_argument("--seeds", type=int, default=5, help="noise seeds")
    ap.add_argument("--crops", type=int, default=800, help="photos crops in all (80 %% train, 20 %% test)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(args.work)
    seeds = list(range(args.seeds))
    out = {}
    r18 = trained_model(work / "r18")
    tr = run_probe(r18, load_data("mnist5k:train", r18.transform()), "pre_logits", work / "r18_train",
                   batch_size=100, device=device)
    te = run_probe(r18, load_data("mnist5k:test", r18.transform()), "pre_logits", work / "r18_test",
                   batch_size=100, device=device)
    out["ResNet18 / mnist5k (10 classes)"] = ablation(r18, tr, te, 5, seeds)
    lite0 = load_model("shipped:efficientnet_lite0")
    tr, te = (run_probe(lite0, load_data(f"photos:{split}?n={args.crops}", lite0.transform()), "pre_logits",
                        work / f"lite0_photos_{split}", batch_size=32, device=device) for split in ("train", "test"))
    out["EfficientNet-Lite0 / photos (1000 classes)"] = ablation(lite0, tr, te, 50, seeds)
    doc = {"command": run["command"], "device": device, "settings": out, "paper": PAPER,
           "photos": dict(LABELLED_PHOTOS)}
    lines = ["# Decomposing the Deep, Table 8: noise on influential vs as many non-influential features", "",
             f"Reproduce: `{doc['command']}` ({device}). Full head of the original model; N(0, 1) noise; mean ± std "
             f"over {args.seeds} noise seeds (each redraws the noise and the non-influential subset).", "",
             "| model / data | k1 = k2 | union of S_c | accuracy | influential → noise | as many non-influential "
             "→ noise | non-infl. − infl. (paired) |", "|---|---|---|---|---|---|---|"]
    for name, r in out.items():
        lines.append(f"| {name} | {r['k1']} | {r['union']} of {r['feature_dim']} ({r['classes_fitted']} classes) | "
                     f"{r['accuracy_full']:.2f} | {r['influential_mean_std']} | {r['non_influential_mean_std']} | "
                     f"{describe(r['paired_non_minus_influential'], 2)} |")
    for name, (a, i, n) in PAPER.items():
        lines.append(f"| paper: {name} | 5 / 50 | — | {a} | {i} | {n} | {n - i:+.2f} |")
    samples = ", ".join(f"{k}: {v['test_samples']}" for k, v in out.items())
    medians = ", ".join(f"{statistics.median(v['influential']):.2f}" for v in out.values())
    lines += ["", f"Test samples: {samples}. Median influential-noise accuracy: {medians}.", ""]
    harness.write_results("decompose_noise", doc, "\n".join(lines), run)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
