"""Explanations at deployment speed, and what the faithfulness metrics cost.

1. ONNX Runtime latency of the same model exported with and without the evidence output (top-1
   class-evidence map), fp32 and int8, at batch 1 and 32 — target: with evidence ≤ 1.1× without;
2. that evidence-producing ORT model versus Layer Grad-CAM in torch (captum, last convolution, one
   forward + backward) on the same inputs — the speed ratio;
3. the faithfulness metrics (deletion + insertion + ROAD) for 100 MNIST test images: forward passes
   per image per method, counted, and their wall time in units of one plain forward pass.

torch and ONNX Runtime both use ``--threads`` intra-op threads (default 1: this machine's 2 cores
are shared); engines are timed interleaved, round by round, so load spikes hit all of them.
Lite0 runs on random crops of scikit-image's real photos (224 px), the MNIST ResNet18 on digits.

Run: python -m benchmarks explain_speed --mnist-model runs/mnist_r18 [--threads 1]

Writes benchmarks/results/explain_speed.{json,md}. With ``--lite0-rounds N [--batch B]`` it measures only
measurement 1 for Lite0 at batch B (default 1; fp32 and int8), in N interleaved rounds whose engine order alternates,
and reports the median and spread of the per-round ratios (benchmarks/results/explain_speed_lite0_bB.{json,md}).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from benchmarks.export_latency import BATCHES, _train_mnist, interleaved_latency, photo_crops
from inspectnet import load_model
from inspectnet.analysis.explain.faithfulness import FaithfulnessConfig, faithfulness_curves
from inspectnet.analysis.explain.methods import MethodConfig, explanation_maps, gradcam_layer
from inspectnet.data import load_data
from inspectnet.data.subsets import calibration_arrays, spread_subset
from inspectnet.export.onnx import export_onnx, torch_threads
from inspectnet.runtime.classifier import make_session


def latency(label: str, zm, images: np.ndarray, threads: int, work: Path) -> dict:
    """Plain vs evidence ORT (fp32 and int8) and torch Layer Grad-CAM, interleaved, on ``images``."""
    from captum.attr import LayerGradCam

    sessions = {}
    for evidence in (None, 1):
        res = export_onnx(zm, work / f"{label}_{'evidence' if evidence else 'plain'}.onnx", evidence=evidence,
                          int8=True, calibration=images[:64], latency=False, force=True, device="cpu")
        for kind, path in (("fp32", res.path), ("int8", res.int8["path"])):
            sessions[f"ort_{kind}_{'evidence' if evidence else 'plain'}"] = make_session(
                path, providers=["CPUExecutionProvider"], threads=threads)
    cam = LayerGradCam(zm.model, zm.model.get_submodule(gradcam_layer(zm)))

    def gradcam(x: np.ndarray):  # timed inside inference_mode: Grad-CAM needs autograd back
        with torch.inference_mode(False), torch.enable_grad():
            xt = torch.from_numpy(x)
            with torch.no_grad():
                target = zm.model(xt).argmax(1)
            return cam.attribute(xt, target=target, relu_attributions=True)

    engines = {name: _runner(s) for name, s in sessions.items()}
    engines["torch_gradcam"] = gradcam
    xs = {b: np.ascontiguousarray(images[:b]) for b in BATCHES}
    heavy = zm.data_config["input_size"][-1] >= 128
    lat = interleaved_latency(engines, xs, threads, rounds=5 if heavy else 9, reps={1: 3 if heavy else 20, 32: 1})
    ratios = {b: {"fp32_evidence_vs_plain": lat["ort_fp32_evidence"][b] / lat["ort_fp32_plain"][b],
                  "int8_evidence_vs_plain": lat["ort_int8_evidence"][b] / lat["ort_int8_plain"][b],
                  "gradcam_vs_ort_fp32_evidence": lat["torch_gradcam"][b] / lat["ort_fp32_evidence"][b]}
              for b in map(str, BATCHES)}
    return {"model": label, "spec": zm.spec, "input_size": list(zm.data_config["input_size"]),
            "gradcam_layer": gradcam_layer(zm), "latency_ms": lat, "ratios": ratios}


def rounds_overhead(zm, images: np.ndarray, threads: int, rounds: int, work: Path, batch: int = 1) -> dict:
    """Per-round ORT latency ratio with / without the evidence output at ``batch``, fp32 and int8.

    Each round times plain and evidence back to back (20 runs each at batch 1, one above), the order
    flipped every round, so a load change between the two halves of a round biases neither side on average.
    """
    engines = {}
    for evidence in (None, 1):
        res = export_onnx(zm, work / f"b1_{'evidence' if evidence else 'plain'}.onnx", evidence=evidence,
                          int8=True, calibration=images, latency=False, force=True, device="cpu")
        for kind, path in (("fp32", res.path), ("int8", res.int8["path"])):
            engines[(kind, bool(evidence))] = _runner(make_session(path, providers=["CPUExecutionProvider"],
                                                                   threads=threads))
    x, ratios, ms = np.ascontiguousarray(images[:batch]), {"fp32": [], "int8": []}, {k: [] for k in engines}
    reps = 20 if batch == 1 else 1
    for fn in engines.values():
        fn(x)
    for r in range(rounds):
        for kind in ratios:
            pair = [(kind, False), (kind, True)][:: 1 if r % 2 == 0 else -1]
            lat = interleaved_latency({k: engines[k] for k in pair}, {batch: x}, threads, rounds=1, reps={batch: reps})
            for k in pair:
                ms[k].append(lat[k][str(batch)])
            ratios[kind].append(lat[(kind, True)][str(batch)] / lat[(kind, False)][str(batch)])
    summary = {kind: {"median": float(np.median(v)), "q25": float(np.percentile(v, 25)),
                      "q75": float(np.percentile(v, 75)), "min": float(np.min(v)), "max": float(np.max(v)),
                      "rounds": len(v), "within_1_1": float(np.mean(np.asarray(v) <= 1.1))}
               for kind, v in ratios.items()}
    return {"ratios": summary, "per_round": ratios,
            "median_ms": {f"{k[0]}_{'evidence' if k[1] else 'plain'}": float(np.median(v)) for k, v in ms.items()}}


def rounds_table(doc: dict) -> str:
    r, b = doc["result"], doc["batch"]
    runs = "20 runs" if b == 1 else "one run"
    lines = [f"# Lite0 at batch {b}: ORT latency with / without the evidence output ({doc['threads']} thread(s))", "",
             f"{doc['rounds']} interleaved rounds ({runs} of each engine per round, order alternating), {b} crop(s) "
             f"of real photos, 224 px (machine and load average: Environment below). "
             "Target: with evidence ≤ 1.1× without.", "",
             "| model | median ratio | interquartile range | min – max | rounds ≤ 1.1× | median ms plain / evidence |",
             "|---|---|---|---|---|---|"]
    for kind, q in r["ratios"].items():
        lines.append(f"| ORT {kind} | {q['median']:.3f}× | {q['q25']:.3f}–{q['q75']:.3f}× | {q['min']:.2f}–{q['max']:.2f}× "
                     f"| {100 * q['within_1_1']:.0f} % | {r['median_ms'][kind + '_plain']:.2f} / "
                     f"{r['median_ms'][kind + '_evidence']:.2f} |")
    lines += ["", f"Reproduce: `python -m benchmarks explain_speed --lite0-rounds {doc['rounds']} --batch {b} "
              f"--threads {doc['threads']}`"]
    return "\n".join(lines) + "\n"


def _runner(session):
    """A callable that runs ``session`` on a batch and fetches every output."""
    return lambda x: session.run(None, {"input": x})


def faithfulness_cost(zm, n: int, threads: int) -> dict:
    """Forward passes per image per method (counted) and wall time of the metrics, for ``n`` test digits."""
    ds = spread_subset(load_data("mnist5k:test", zm.transform()), n)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    config = FaithfulnessConfig()
    with torch_threads(threads):
        with torch.no_grad():  # not inference_mode: the targets go on into Grad-CAM's and IG's autograd
            t0 = time.perf_counter()
            targets = zm.model(x).argmax(1)
            forward = time.perf_counter() - t0
        rows = []
        for method in ("integrated_gradients", "gradcam", "evidence", "random"):
            maps = explanation_maps(method, zm, x, targets, indices=range(len(x)), config=MethodConfig(ig_steps=16))
            t0 = time.perf_counter()
            c = faithfulness_curves(lambda b: zm.model(b), x, maps, targets, config)
            seconds = time.perf_counter() - t0
            evaluated = c.status.count("ok")
            rows.append({"method": method, "map_size": list(maps.shape[1:]), "evaluated": evaluated,
                         "forward_passes": c.forward_passes,
                         "passes_per_image": c.forward_passes / evaluated if evaluated else None,
                         "seconds": seconds, "in_plain_forward_passes": seconds / forward * len(x) / evaluated
                         if evaluated else None})
    return {"images": len(x), "plain_forward_seconds": forward, "planned_passes_per_image": config.passes_per_image(),
            "steps": config.steps, "road_fractions": list(config.road_fractions), "rows": rows}


def table(doc: dict) -> str:
    t = doc["threads"]
    lines = [f"# Explanations at deployment speed (CPU, {t} thread(s) for torch and ONNX Runtime)", "",
             "Median ms per batch, engines timed interleaved in one run on this project's 2 shared cores (other jobs "
             "were running: absolute numbers are noisy, the ratios less so). `plain` = exported without, `evidence` = "
             "with the top-1 class-evidence output (all outputs fetched).", "",
             "| model | batch | ORT fp32 plain | ORT fp32 + evidence | ratio | ORT int8 plain | ORT int8 + evidence | "
             "ratio | torch Layer Grad-CAM | Grad-CAM / ORT fp32 + evidence |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["latency"]:
        lat, q = r["latency_ms"], r["ratios"]
        for b in map(str, BATCHES):
            lines.append(f"| {r['model']} | {b} | {lat['ort_fp32_plain'][b]:.2f} | {lat['ort_fp32_evidence'][b]:.2f} | "
                         f"{q[b]['fp32_evidence_vs_plain']:.3f}x | {lat['ort_int8_plain'][b]:.2f} | "
                         f"{lat['ort_int8_evidence'][b]:.2f} | {q[b]['int8_evidence_vs_plain']:.3f}x | "
                         f"{lat['torch_gradcam'][b]:.2f} | {q[b]['gradcam_vs_ort_fp32_evidence']:.1f}x |")
    f = doc["faithfulness_cost"]
    lines += ["", f"Faithfulness metrics for {f['images']} MNIST test digits ({doc['mnist_model']}): deletion + insertion "
              f"({f['steps']} steps) + ROAD at {', '.join(str(x) for x in f['road_fractions'])}; planned "
              f"{f['planned_passes_per_image']} forward passes per image per method (target ≤ 30).", "",
              "| method | map | images ranked | forward passes per image (counted) | wall time in plain forward passes "
              "per image |", "|---|---|---|---|---|"]
    for r in f["rows"]:
        lines.append(f"| {r['method']} | {'x'.join(map(str, r['map_size']))} | {r['evaluated']} | "
                     + (f"{r['passes_per_image']:.1f} | {r['in_plain_forward_passes']:.1f} |" if r["evaluated"]
                        else "— (constant maps are reported, not scored) | — |"))
    lines += ["", "Reproduce: `python -m benchmarks explain_speed --mnist-model " + doc["mnist_model"]
              + f" --threads {t}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mnist-model", help="folder of a ResNet18 trained on MNIST (trained here when absent)")
    ap.add_argument("--images", type=int, default=100, help="digits for the faithfulness cost")
    ap.add_argument("--lite0-rounds", type=int, help="only the Lite0 evidence overhead at --batch, in N rounds")
    ap.add_argument("--batch", type=int, choices=BATCHES, default=1, help="batch size for --lite0-rounds")
    args = ap.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(args.threads)
    if args.lite0_rounds:
        return main_rounds(args.lite0_rounds, args.threads, args.batch, run)
    with tempfile.TemporaryDirectory(prefix="inspectnet-explain-") as tmp:
        work = Path(tmp)
        lite0 = load_model("shipped:efficientnet_lite0")
        rows = [latency("efficientnet_lite0", lite0, photo_crops(lite0, 8, seed=3)[0], args.threads, work)]
        print(json.dumps(rows[-1]["ratios"]), file=sys.stderr)
        mnist_dir = args.mnist_model or _train_mnist(work / "mnist_r18")
        r18 = load_model(str(mnist_dir))
        digits = calibration_arrays(load_data("mnist5k:test", r18.transform()), 64)[0]
        rows.append(latency("resnet18_mnist", r18, digits, args.threads, work))
        print(json.dumps(rows[-1]["ratios"]), file=sys.stderr)
        cost = faithfulness_cost(r18, args.images, args.threads)
    doc = {"threads": args.threads, "batches": list(BATCHES),
           "mnist_model": str(args.mnist_model or "trained by the script"), "latency": rows, "faithfulness_cost": cost}
    harness.write_results("explain_speed", doc, table(doc), run)
    print(table(doc))
    return 0


def main_rounds(rounds: int, threads: int, batch: int, run: dict) -> int:
    with tempfile.TemporaryDirectory(prefix="inspectnet-explain-") as tmp:
        lite0 = load_model("shipped:efficientnet_lite0")
        result = rounds_overhead(lite0, photo_crops(lite0, 8, seed=3)[0], threads, rounds, Path(tmp), batch)
    doc = {"threads": threads, "rounds": rounds, "batch": batch, "result": result}
    harness.write_results(f"explain_speed_lite0_b{batch}", doc, rounds_table(doc), run)
    print(rounds_table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
