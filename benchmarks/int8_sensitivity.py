"""int8 vs fp32 agreement by recipe and per node (keep one weighted node in fp32 at a time), for one model.

Models (``--model``):
  lite0          shipped:efficientnet_lite0 (real ImageNet weights, its own 0.5/0.5 preprocessing), calibrated
                 on random photo crops (seed 1, the crops of the export_latency benchmark), agreement on other
                 crops (seed 2), accuracy in its own 1000 classes on the labelled ``photos`` test crops;
  resnet18-mnist / mobilenetv2-mnist
                 ResNet18 / MobileNetV2-0.5 (depthwise, ReLU6, like Lite0) trained here 3 epochs on mnist5k:train
                 at 28 px, calibrated on 256 training digits, agreement and accuracy on 500 test digits.

Rows: the recipe before this benchmark's findings (ORT defaults, no bias correction; for Lite0 also with the
ImageNet mean/std the earlier runs used), the product recipe (bias-corrected, inspectnet.export.int8), a
larger calibration set, and the fp32 model against itself on inputs moved by ±1 grey level (how stable the
fp32 top-1 is on this set at all). Then every Conv/Gemm node kept in fp32 alone (calibrated once, ranges
cached), ranked; the top k kept together (k = 1, 2, 4) with the int8 / fp32 ORT latency ratio at batch 1
(alternated, one thread). Each run replaces its model's entry, with the environment it ran in, in
benchmarks/results/int8_sensitivity.json and re-renders the .md.

Run: python -m benchmarks int8_sensitivity --model lite0 [--threads 1]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.export_latency import photo_crops  # same crops as the latency benchmark
from inspectnet import load_model
from inspectnet.export.int8 import quantizable_nodes, quantize_int8
from inspectnet.export.onnx import calibration_inputs, export_onnx
from inspectnet.runtime.classifier import make_session, softmax

RESULTS_NAME = "int8_sensitivity"  # one file for every model (and int8_adaround's rows)
CONFIDENT = 0.3  # the target's bar: agreement where fp32's top-1 probability is at least this
GREY_LEVEL = 2 / 255  # one 8-bit step of a [0, 1] image after a 0.5 std normalisation (larger for ImageNet std)


def logits(session, x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([session.run(["logits"], {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def agreement(l32: np.ndarray, l8: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Top-1 agreement overall and where fp32 is confident; accuracy of both where labelled."""
    same = l32.argmax(1) == l8.argmax(1)
    confident = softmax(l32).max(1) >= CONFIDENT
    out = {"top1_agreement": round(float(same.mean()), 4),
           "agreement_where_confident": round(float(same[confident].mean()), 4) if confident.any() else None,
           "confident": int(confident.sum()), "mean_abs_logit_error": round(float(np.abs(l8 - l32).mean()), 4)}
    if labels is not None:
        out["accuracy_fp32"] = round(float((l32.argmax(1) == labels).mean()), 4)
        out["accuracy_int8"] = round(float((l8.argmax(1) == labels).mean()), 4)
    return out


def batch1_ratio(s32, s8, x: np.ndarray, rounds: int = 7, reps: int = 5) -> float:
    """ORT fp32 / int8 median seconds at batch 1 (``reps`` runs a sample), alternated by
    :func:`benchmarks.harness.alternate`."""
    feed = {"input": x[:1]}

    def runs(s):
        return lambda: [s.run(["logits"], feed) for _ in range(reps)]

    t = harness.alternate({"fp32": runs(s32), "int8": runs(s8)}, rounds)
    return round(t["fp32"]["median_s"] / t["int8"]["median_s"], 2)


def lite0(work: Path) -> dict:
    zm = load_model("shipped:efficientnet_lite0")
    imagenet_norm = load_model("shipped:efficientnet_lite0")
    imagenet_norm.data_config = {**zm.data_config, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    return {"zm": zm, "cal": photo_crops(zm, 12, seed=1)[0], "eval": photo_crops(zm, 15, seed=2)[0],
            "eval_labels": None, "labelled": calibration_inputs(zm, "photos:test?n=1000", limit=None),
            "more_cal": photo_crops(zm, 48, seed=3)[0],
            "data": "calibration: 96 photo crops (seed 1); agreement: 120 photo crops (seed 2); accuracy: "
                    "200 labelled `photos:test?n=1000` crops (tabby, espresso, missile, tripod)",
            "variants": {"ImageNet mean/std (as the earlier runs), no bias correction": (imagenet_norm, False)}}


def mnist(arch: str, work: Path) -> dict:
    from inspectnet.data import load_data
    from inspectnet.training.loop import TrainConfig, train

    zm = load_model(arch, num_classes=10, in_chans=1, input_size=28)
    train(zm, load_data("mnist5k:train", zm.transform()), work / arch, TrainConfig(epochs=3, batch_size=64),
          device="cpu")
    zm = load_model(str(work / arch))
    x, y = calibration_inputs(zm, "mnist5k:test", limit=500)
    return {"zm": zm, "cal": calibration_inputs(zm, "mnist5k:train", limit=256, labelled=False)[0], "eval": x,
            "eval_labels": y, "labelled": None,
            "more_cal": calibration_inputs(zm, "mnist5k:train", limit=1024, labelled=False)[0],
            "data": f"{arch} trained 3 epochs on mnist5k:train (28 px); calibration: 256 training digits; "
                    "agreement and accuracy: 500 test digits", "variants": {}}


MODELS = {"lite0": lite0, "resnet18-mnist": lambda w: mnist("resnet18", w),
          "mobilenetv2-mnist": lambda w: mnist("mobilenetv2_050", w)}


def measure(name: str, threads: int, work: Path) -> dict:
    setup = MODELS[name](work)
    zm, cal, ev = setup["zm"], setup["cal"], setup["eval"]
    fp32 = work / "fp32.onnx"
    export_onnx(zm, fp32, latency=False)
    s32 = make_session(fp32, providers=["CPUExecutionProvider"], threads=threads)
    l32 = logits(s32, ev)
    cache = work / "ranges.json"

    def int8(keep=(), corrected=True, calibration=cal, source=fp32, cached=True):
        out = work / "int8.onnx"
        quantize_int8(source, out, calibration, keep_fp32=keep, bias_correction=corrected,
                      calibration_cache=cache if cached else None)
        return make_session(out, providers=["CPUExecutionProvider"], threads=threads)

    def row(session, reference=l32, x=ev, labels=setup["eval_labels"]):
        return agreement(reference, logits(session, x), labels)

    recipes = {}
    for label, (variant, corrected) in setup["variants"].items():
        v32 = work / "variant.onnx"
        export_onnx(variant, v32, latency=False, force=True)
        vx = photo_crops(variant, 15, seed=2)[0]
        s = int8(corrected=corrected, calibration=photo_crops(variant, 12, seed=1)[0], source=v32, cached=False)
        recipes[label] = row(s, logits(make_session(v32, threads=threads), vx), vx)
    recipes["ORT static QDQ defaults, no bias correction"] = row(int8(corrected=False))
    final = int8()
    recipes["bias-corrected (inspectnet default)"] = row(final)
    recipes[f"bias-corrected, {len(setup['more_cal'])} calibration inputs"] = row(
        int8(calibration=setup["more_cal"], cached=False))
    noisy = ev + np.random.default_rng(0).uniform(-GREY_LEVEL, GREY_LEVEL, ev.shape).astype(np.float32)
    recipes["fp32 vs fp32 on inputs ±1 grey level (no int8)"] = row(s32, x=noisy)
    print(json.dumps(recipes, indent=1), file=sys.stderr)
    labelled = None
    if setup["labelled"] is not None:
        x, y = setup["labelled"]
        labelled = agreement(logits(s32, x), logits(final, x), y)
    per_node = []
    for i, node in enumerate(quantizable_nodes(fp32)):
        per_node.append({"node": node, "index": i, **row(int8([node]))})
        print(per_node[-1], file=sys.stderr)
    ranked = sorted(per_node, key=lambda r: -r["top1_agreement"])
    kept = [{"k": 0, "nodes": [], **recipes["bias-corrected (inspectnet default)"],
             "int8_speedup_batch1": batch1_ratio(s32, final, ev)}]
    for k in (1, 2, 4):
        keep = [r["node"] for r in ranked[:k]]
        s8 = int8(keep)
        kept.append({"k": k, "nodes": keep, **row(s8), "int8_speedup_batch1": batch1_ratio(s32, s8, ev)})
        print(kept[-1], file=sys.stderr)
    return {"model": zm.base or zm.spec, "data": setup["data"], "recipes": recipes, "labelled_photos": labelled,
            "keep_one_in_fp32": per_node, "keep_top_k_in_fp32": kept}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(MODELS), default="lite0")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    run = harness.start()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="inspectnet-sens-") as tmp:
        entry = measure(args.model, args.threads, Path(tmp))
    # each model's entry keeps the environment it ran in: the file gathers runs made at different times
    entry.update(threads=args.threads, environment=harness.finish(run))
    doc = stored()  # read now, not at the start: runs for other models may have ended
    doc["models"] = {**doc.get("models", {}), args.model: entry}
    harness.write_results(RESULTS_NAME, doc, table(doc), run)
    print(table(doc))
    return 0


def stored() -> dict:
    """The results file as it is now (models measured so far, AdaRound rows), or a new one."""
    path = harness.RESULTS / f"{RESULTS_NAME}.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    return {**doc, "confident_if_fp32_prob_ge": CONFIDENT}


def run_line(entry: dict) -> str:
    """How an entry was measured: its command, machine and load (entries written before the environment was
    recorded carry only a command and the load at their end)."""
    env = entry.get("environment")
    if env is None:
        return (f"`{entry.get('command')}` — load average {', '.join(map(str, entry.get('load_average', [])))} at the "
                f"end" + (f", {entry['minutes']} min" if "minutes" in entry else ""))
    return (f"`{env['command']}` — {env['cpu']['model']} ({' '.join(env['cpu']['flags']) or 'no listed flags'}), "
            f"load average {env['load_before']} before, {env['load_after']} after, {env['wall_s']} s")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _acc(r: dict) -> str:
    return f"{r['accuracy_fp32']:.1%} / {r['accuracy_int8']:.1%}" if "accuracy_int8" in r else "—"


def table(doc: dict) -> str:
    conf = f"where fp32 prob ≥ {doc['confident_if_fp32_prob_ge']}"
    lines = ["# int8 vs fp32: recipes and per-node sensitivity", "",
             "Static QDQ int8 (per-channel QInt8 weights, QUInt8 activations, MinMax ranges); "
             "`bias-corrected` is the product recipe (`inspectnet export --int8`, `quantize_int8`). "
             "Shared 2-core machine, one thread; speed-ups are fp32 / int8 ORT medians timed interleaved.", ""]
    for name, m in doc["models"].items():
        lines += [f"## {name}: {m['model']}", "", f"{run_line(m)}; {m['data']}.", "",
                  f"| recipe | top-1 agreement | {conf} (n) | mean abs logit error | accuracy fp32 / int8 |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {r['top1_agreement']:.1%} | {_pct(r['agreement_where_confident'])} ({r['confident']}) | "
                  f"{r['mean_abs_logit_error']:.3f} | {_acc(r)} |" for k, r in m["recipes"].items()]
        if m.get("labelled_photos"):
            r = m["labelled_photos"]
            lines += ["", f"Labelled photo crops (own 1000 classes), bias-corrected int8: agreement "
                      f"{r['top1_agreement']:.1%}, accuracy fp32 {r['accuracy_fp32']:.1%} / int8 {r['accuracy_int8']:.1%}."]
        lines += ["", "Bias-corrected, the top k nodes of the ranking below kept in fp32 together:", "",
                  f"| k | nodes | top-1 agreement | {conf} | int8 / fp32 speed-up, batch 1 |", "|---|---|---|---|---|"]
        lines += [f"| {r['k']} | {', '.join(r['nodes']) or '—'} | {r['top1_agreement']:.1%} | "
                  f"{_pct(r['agreement_where_confident'])} | {r['int8_speedup_batch1']:.2f}× |"
                  for r in m["keep_top_k_in_fp32"]]
        lines += ["", "One node kept in fp32 at a time (graph order; 0 is the stem, the last the classifier):", "",
                  f"| # | node | top-1 agreement | {conf} |", "|---|---|---|---|"]
        lines += [f"| {r['index']} | {r['node']} | {r['top1_agreement']:.1%} | {_pct(r['agreement_where_confident'])} |"
                  for r in m["keep_one_in_fp32"]]
        lines.append("")
    if "adaround" in doc:
        lines += _adaround_table(doc["adaround"], conf)
    return "\n".join(lines)


def _adaround_table(a: dict, conf: str) -> list[str]:
    """The int8_adaround benchmark's rows: Lite0, bias-corrected, nearest vs learned rounding."""
    stable = a["rows"][0]["fp32_stable"]
    lines = ["## lite0: AdaRound (learned rounding of the int8 weights), bias-corrected", "",
             f"{run_line(a)}; same crops and calibration as above. Extra statistic, not the target: "
             f"agreement on the {stable} fp32-stable crops (fp32 top-1 unchanged under ±1 grey level). "
             "The graph is unchanged, so the int8 speed is the bias-corrected row's.", "",
             f"| AdaRound | top-1 agreement (all) | {conf} (n) | on fp32-stable crops | mean abs logit error | "
             "export time |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['adaround']} | {r['top1_agreement']:.1%} | {_pct(r['agreement_where_confident'])} "
              f"({r['confident']}) | {r['agreement_fp32_stable']:.1%} | {r['mean_abs_logit_error']:.3f} | "
              f"{r['export_seconds']:.0f} s |" for r in a["rows"]]
    return lines + [""]


if __name__ == "__main__":
    raise SystemExit(main())
