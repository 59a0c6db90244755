"""How far the trust measurement's few-step deletion/insertion AUC is from the 28-step curve's, measured.

The shipped EfficientNet-Lite0 at 224 px explains ``--images`` evenly spread ``photos100`` crops
(their top-1 class) with its class evidence, Grad-CAM and the random control; each image's deletion
and insertion curves are scored at 28 steps (blur baseline) and the curves of 1, 2, 4, 7 and 14 steps
are read off them (their points lie on the 28-step grid), so every AUC difference is exact for these
images. Per step count: the largest and the 95th-percentile |AUC(k) − AUC(28)| over images, methods and
both curves; the largest change of the paired difference method − random (the statistic the card
reports); whether the verdict "beats the random control" changes; and the proven bound
(1 − k/28)·V/k with V each curve's own variation over the coarse intervals (checked to hold on
every curve) and with V = 1 (a monotone probability curve).

Run: python -m benchmarks trust_steps [--images 16] [--threads 1]   (writes benchmarks/results/trust_steps.{json,md})
"""

import argparse
import sys

import numpy as np
import torch

from benchmarks import harness

STEPS = (1, 2, 4, 7, 14)


def measure(curves: dict, scores28: dict, steps: int) -> dict:
    from inspectnet.analysis.explain.faithfulness import auc, paired_differences
    from inspectnet.analysis.explain.trust import REFERENCE_STEPS, coarse_curve, interval_variation, step_error_bound

    fr = [i / steps for i in range(steps + 1)]
    errors, slack, scores = [], [], {}
    for m, c in curves.items():
        scores[m] = {}
        for kind in ("deletion", "insertion"):
            ok = np.isfinite(c[kind]).all(1)
            a = auc(coarse_curve(c[kind][ok], steps), fr)
            err = np.abs(a - scores28[m][kind + "_auc"][ok])
            bound = step_error_bound(steps, REFERENCE_STEPS) * interval_variation(c[kind][ok], steps)
            errors += err.tolist()
            slack += (bound - err).tolist()
            full = np.full(len(c[kind]), np.nan)
            full[ok] = a
            scores[m][kind + "_auc"] = full
    diffs = {}
    for m in curves:
        if m != "random":
            k, ref = paired_differences(scores[m], scores["random"]), paired_differences(scores28[m], scores28["random"])
            diffs[m] = {"deletion_change": abs(k["deletion_auc"] - ref["deletion_auc"]),
                        "insertion_change": abs(k["insertion_auc"] - ref["insertion_auc"]),
                        "verdict": k["beats_control"], "verdict_28": ref["beats_control"]}
    return {"steps": steps, "max_abs_error": float(np.max(errors)), "p95_abs_error": float(np.percentile(errors, 95)),
            "mean_abs_error": float(np.mean(errors)), "bound_holds_on_every_curve": bool(min(slack) >= -1e-12),
            "bound_monotone": step_error_bound(steps), "paired": diffs, "curves": len(errors)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(args.threads)
    from inspectnet import load_data, load_model
    from inspectnet.analysis.explain.evidence import pooled_head
    from inspectnet.analysis.explain.faithfulness import auc
    from inspectnet.analysis.explain.methods import gradcam_layer, random_maps
    from inspectnet.analysis.explain.trust import REFERENCE_STEPS, TrustConfig, deletion_insertion, maps_in_one_pass
    from inspectnet.data.subsets import spread_indices

    zm = load_model("shipped:efficientnet_lite0")
    data = load_data("photos100", zm.transform(), model_classes=zm.class_names)
    indices = spread_indices(len(data), args.images)
    x = torch.stack([data[i][0] for i in indices])
    logits, maps = maps_in_one_pass(zm, x, layer=gradcam_layer(zm), pooled=pooled_head(zm))
    maps["random"] = random_maps(indices, tuple(maps["gradcam"].shape[1:]))
    targets = logits.argmax(1)
    probs = torch.softmax(logits, 1).gather(1, targets[:, None])[:, 0]
    with torch.inference_mode():
        curves = deletion_insertion(zm.model.eval(), x, maps, targets, probs, TrustConfig(steps=REFERENCE_STEPS))
    fr = [i / REFERENCE_STEPS for i in range(REFERENCE_STEPS + 1)]
    scores28 = {m: {k + "_auc": auc(c[k], fr) for k in ("deletion", "insertion")} for m, c in curves.items()}
    rows = [measure(curves, scores28, k) for k in STEPS]
    doc = {"model": zm.spec, "data": "photos100", "images": len(indices), "reference_steps": REFERENCE_STEPS,
           "baseline": "blur", "rows": rows,
           "auc_28": {m: {k: float(np.nanmean(v)) for k, v in s.items()} for m, s in scores28.items()}}
    lines = [f"# Trust curves: AUC error of k steps against the {REFERENCE_STEPS}-step curve", "",
             f"{zm.spec} at 224 px, {len(indices)} evenly spread photos100 crops, each explained for its top-1 class "
             "(class evidence, Grad-CAM, random control), deletion and insertion with the blur baseline; "
             f"the k-step curves are the {REFERENCE_STEPS}-step curves' points on the k-step grid.", "",
             "| steps | max abs AUC error | 95th pct | mean | proven bound, V = 1 | bound (1 − k/28)·V/k holds on every "
             "curve | max change of paired Δ deletion / insertion vs random | verdicts changed |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dd = max(p["deletion_change"] for p in r["paired"].values())
        di = max(p["insertion_change"] for p in r["paired"].values())
        changed = sum(p["verdict"] != p["verdict_28"] for p in r["paired"].values())
        lines.append(f"| {r['steps']} | {r['max_abs_error']:.4f} | {r['p95_abs_error']:.4f} | {r['mean_abs_error']:.4f} "
                     f"| {r['bound_monotone']:.4f} | {'yes' if r['bound_holds_on_every_curve'] else 'NO'} | "
                     f"{dd:.4f} / {di:.4f} | {changed} of {len(r['paired'])} |")
    lines += ["", f"{rows[0]['curves']} curves per row (methods × images × deletion/insertion). 28-step mean AUCs: "
              + "; ".join(f"{m} deletion {s['deletion_auc']:.3f}, insertion {s['insertion_auc']:.3f}"
                          for m, s in doc["auc_28"].items()) + "."]
    harness.write_results("trust_steps", doc, "\n".join(lines), run)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
