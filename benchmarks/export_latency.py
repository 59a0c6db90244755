"""ONNX Runtime fp32 / int8 vs PyTorch eager latency, with int8 top-1 agreement on real images.

Models: EfficientNet-Lite0 with its real ImageNet weights (224 px), and a ResNet18 trained on MNIST
(28 px, trained by this script when no folder is given: 3 epochs on mnist5k:train, ~1 min).
torch and ONNX Runtime use the SAME number of intra-op threads (--threads, default 1: this machine's
2 cores are shared). Engines are timed interleaved, round by round (:func:`benchmarks.harness.alternate`),
so load spikes hit all of them.

Run: python -m benchmarks export_latency [--threads 1] [--mnist-model DIR]

Writes benchmarks/results/export_latency.{json,md}.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from inspectnet import load_model
from inspectnet.export.onnx import calibration_inputs, export_onnx, torch_threads
from inspectnet.runtime.classifier import make_session, softmax

BATCHES = (1, 32)


def interleaved_latency(engines: dict, x_by_batch: dict, threads: int, rounds: int = 5,
                        reps: dict | None = None) -> dict:
    """Median ms per engine and batch: each round times every (engine, batch) once, ``reps[batch]`` calls
    (default 3), alternated by :func:`benchmarks.harness.alternate` after one untimed call of each."""
    def repeated(fn, x, n):
        def call():
            for _ in range(n):
                fn(x)
        return call

    n = {b: (reps or {}).get(b, 3) for b in x_by_batch}
    calls = {(name, b): repeated(fn, x, n[b]) for name, fn in engines.items() for b, x in x_by_batch.items()}
    with torch_threads(threads), torch.inference_mode():
        timed = harness.alternate(calls, rounds)
    return {name: {str(b): timed[name, b]["median_s"] * 1e3 / n[b] for b in x_by_batch} for name in engines}


def photo_crops(zm, per_photo: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random crops (30-100 % of each side, random flips) of scikit-image's 8 real photos, preprocessed.

    Natural-image inputs for an ImageNet model beyond the 8 photos themselves; calibration and
    evaluation use different seeds, so their crops differ.
    """
    from PIL import Image

    from inspectnet.data import load_data
    from inspectnet.data.sources import crop_boxes

    ds, t = load_data("samples"), zm.transform()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(ds)):
        im = ds.image(i)
        for left, top, w, h, flipped in crop_boxes(*im.size, per_photo, rng):
            crop = im.crop((left, top, left + w, top + h))
            out.append(t(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flipped else crop).numpy())
    return np.stack(out).astype(np.float32), np.full(len(out), -1)


def _inputs(zm, spec: str, n: int, labelled: bool) -> tuple[np.ndarray, np.ndarray]:
    if spec.startswith("photo-crops"):  # photo-crops:SEED
        return photo_crops(zm, max(1, n // 8), int(spec.split(":")[1]))
    return calibration_inputs(zm, spec, limit=n, labelled=labelled)


def bench(label: str, zm, calib_specs: list[tuple[str, int]], eval_specs: list[tuple[str, int]], threads: int,
          workdir: Path, labelled: bool = True) -> dict:
    """Export with int8, then time torch / ORT fp32 / ORT int8; labels count only when ``labelled``
    (MNIST or shapes labels mean nothing to an ImageNet model)."""
    cal = np.concatenate([_inputs(zm, s, n, False)[0] for s, n in calib_specs])
    evs = [_inputs(zm, s, n, labelled) for s, n in eval_specs]
    ev = (np.concatenate([e[0] for e in evs]), np.concatenate([e[1] for e in evs]))
    out = workdir / f"{label}.onnx"
    res = export_onnx(zm, out, int8=True, calibration=cal, evaluation=ev, latency=False, threads=threads,
                      device="cpu", force=True)
    s32 = make_session(out, providers=["CPUExecutionProvider"], threads=threads)
    s8 = make_session(res.int8["path"], providers=["CPUExecutionProvider"], threads=threads)
    by_source = {}
    for (spec, _), (x_e, _) in zip(eval_specs, evs):
        l32, l8 = (np.concatenate([s.run(["logits"], {"input": x_e[i:i + 32]})[0]
                                   for i in range(0, len(x_e), 32)]) for s in (s32, s8))
        p32, p8 = l32.argmax(1), l8.argmax(1)
        confident = softmax(l32).max(1) >= 0.5  # where fp32 itself is sure of its top-1
        top5 = np.argsort(-l32, axis=1)[:, :5]
        by_source[spec] = {"n": len(x_e), "top1_agreement_with_fp32": float((p32 == p8).mean()),
                           "n_fp32_confident": int(confident.sum()),
                           "top1_agreement_where_fp32_prob_ge_0.5": float((p32 == p8)[confident].mean())
                           if confident.any() else None,
                           "int8_top1_in_fp32_top5": float((top5 == p8[:, None]).any(1).mean())}
    shape = zm.data_config["input_size"]
    rng = np.random.default_rng(0)
    xs = {b: rng.standard_normal((b, *shape)).astype(np.float32) for b in BATCHES}
    engines = {
        "torch_eager": lambda x: zm.model(torch.from_numpy(x)),
        "ort_fp32": lambda x: s32.run(["logits"], {"input": x}),
        "ort_int8": lambda x: s8.run(["logits"], {"input": x}),
    }
    heavy = shape[-1] >= 128
    lat = interleaved_latency(engines, xs, threads, rounds=5 if heavy else 9, reps={1: 3 if heavy else 20, 32: 1})
    ratios = {str(b): {"ort_fp32_vs_torch": lat["torch_eager"][str(b)] / lat["ort_fp32"][str(b)],
                       "int8_vs_ort_fp32": lat["ort_fp32"][str(b)] / lat["ort_int8"][str(b)]} for b in BATCHES}
    return {"model": label, "spec": zm.spec, "input_size": list(shape), "parity": res.parity,
            "int8": res.int8, "int8_agreement_by_source": by_source, "latency_ms": lat, "speedup": ratios,
            "size_bytes": res.size_bytes,
            "calibration": calib_specs, "evaluation": eval_specs}


def table(rows: list[dict], threads: int) -> str:
    lines = [f"# Export latency: ONNX Runtime vs PyTorch eager (CPU, {threads} thread(s) each)", "",
             f"torch and ONNX Runtime intra-op threads are both {threads}; median ms per batch, engines timed "
             "interleaved in one run; machine: 2 shared cores (other jobs were running, so absolute numbers "
             "are noisy, ratios less so).", "",
             "| model | batch | torch eager ms | ORT fp32 ms | ORT int8 ms | fp32 speed-up vs torch | "
             "int8 speed-up vs fp32 | int8 top-1 agreement | accuracy fp32 / int8 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q, lat = r["int8"], r["latency_ms"]
        acc = (f"{q['accuracy_fp32']:.1%} / {q['accuracy_int8']:.1%}" if "accuracy_int8" in q else "n/a (unlabelled)")
        for b in map(str, BATCHES):
            lines.append(f"| {r['model']} | {b} | {lat['torch_eager'][b]:.2f} | {lat['ort_fp32'][b]:.2f} | "
                         f"{lat['ort_int8'][b]:.2f} | {r['speedup'][b]['ort_fp32_vs_torch']:.2f}x | "
                         f"{r['speedup'][b]['int8_vs_ort_fp32']:.2f}x | "
                         f"{q['top1_agreement_with_fp32']:.1%} (n={q['eval_samples']}) | {acc} |")
    lines += ["", "int8 vs fp32 by evaluation source (top-1 agreement; agreement where fp32's top-1 probability "
              "is >= 0.5; int8 top-1 within fp32 top-5):", ""]
    for r in rows:
        for k, v in r["int8_agreement_by_source"].items():
            conf = v["top1_agreement_where_fp32_prob_ge_0.5"]
            conf_txt = f"{conf:.1%} (n={v['n_fp32_confident']})" if conf is not None else "n/a (n=0)"
            lines.append(f"- {r['model']} / {k} (n={v['n']}): {v['top1_agreement_with_fp32']:.1%}; {conf_txt}; "
                         f"{v['int8_top1_in_fp32_top5']:.1%}")
    lines += ["", "fp32 parity (gate, random inputs, batch 1 and 8): " + "; ".join(
        f"{r['model']} max |onnx - torch| {r['parity']['max_abs_diff']:.1e}, top-1 {r['parity']['top1_agreement']:.0%}"
        for r in rows),
        "", "int8: static QDQ, per-channel QInt8 weights, QUInt8 activations, MinMax calibration "
        "(calibration and evaluation images are disjoint; for Lite0, photo-crops:SEED are random crops "
        "of scikit-image's 8 photos with different seeds for calibration and evaluation, and MNIST digits / "
        "shapes are out-of-distribution inputs whose ImageNet predictions have small margins).",
        "", "Reproduce: `python -m benchmarks export_latency --threads " + str(threads) + "`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mnist-model", help="folder of a ResNet18 trained on MNIST (trained here when absent)")
    args = ap.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory(prefix="inspectnet-bench-") as tmp:
        work = Path(tmp)
        lite0 = load_model("shipped:efficientnet_lite0")   # its own preprocessing (mean/std 0.5)
        rows.append(bench("shipped:efficientnet_lite0", lite0, [("photo-crops:1", 96), ("mnist5k:train", 16),
                                                         ("shapes:train?n=400", 16)],
                          [("samples", 8), ("photo-crops:2", 120), ("mnist5k:test", 60), ("shapes:test?n=400", 60)],
                          args.threads, work, labelled=False))
        print(json.dumps(rows[-1]["speedup"]), rows[-1]["int8"]["top1_agreement_with_fp32"], file=sys.stderr)
        mnist_dir = args.mnist_model or _train_mnist(work / "mnist_r18")
        r18 = load_model(mnist_dir)
        rows.append(bench("resnet18_mnist", r18, [("mnist5k:train", 256)], [("mnist5k:test", 1000)],
                          args.threads, work))
        print(json.dumps(rows[-1]["speedup"]), rows[-1]["int8"]["top1_agreement_with_fp32"], file=sys.stderr)
    for row in rows:   # the files lived in a temporary folder, gone now: keep only their names
        row["int8"]["path"] = Path(row["int8"]["path"]).name
    doc = {"threads": {"torch": args.threads, "onnxruntime_intra_op": args.threads}, "batches": list(BATCHES),
           "rows": rows}
    harness.write_results("export_latency", doc, table(rows, args.threads), run)
    print(table(rows, args.threads))
    return 0


def _train_mnist(out: Path) -> Path:
    from inspectnet.data import load_data
    from inspectnet.training.loop import TrainConfig, train

    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=28)
    train(zm, load_data("mnist5k:train", zm.transform()), out, TrainConfig(epochs=3, batch_size=64), device="cpu")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
