"""int8 EfficientNet-Lite0 against fp32 where fp32 is decided: agreement vs speed vs nodes kept in fp32.

Targets: top-1 agreement with fp32 ≥ 99 % on the evaluation crops whose fp32 top-1 is stable under ±1 grey level
(uniform noise, one draw, seed 0), accuracy loss ≤ 0.5 point on ``photos100:test`` (sure labels) and on
``photos:test``, int8 ≥ 1.5× fp32 at batch 1 (ONNX Runtime, CPUExecutionProvider).

Calibration and node selection use 96 ``photos100:train`` crops and 32 ``photos:train`` crops (evenly spread);
evaluation uses the 164 ``photos100:test`` and 40 ``photos:test`` crops, never a calibration crop. The automatic
mixed precision (:func:`inspectnet.export.mixed_precision.select_fp32_nodes`, the ``export --int8-agreement``
recipe) ranks every Conv/Gemm node by measured sensitivity on the calibration crops; each frontier row keeps the
top k of that ranking wholly in fp32 (input, weights, bias) in the bias-corrected int8 file (the weight bits this
CPU gets). Speed: fp32
and int8 sessions (one thread) alternated round by round, each sample 5 runs at batch 1; medians and IQR of wall
and process CPU time, the speed-up from the CPU-time medians (the machine is shared).

``--weight-bits 7`` builds the files an AVX2 CPU without VNNI gets (7-bit weights). Their agreement and accuracy
measured on any x86 CPU are the AVX2 ones: with |w| ≤ 64 and activations ≤ 255, the AVX2 kernel's pairwise
int16 sums (≤ 2 · 255 · 64 = 32640) never saturate, so both kernels compute the same exact int32 dot products.
Their speed is this CPU's, not an AVX2 CPU's.

Run: python -m benchmarks int8_agreement [--ks 0 1 2 3 4 6 8] [--max-fp32 4] [--rounds 15] [--weight-bits 7]
"""

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from benchmarks import harness
from inspectnet import load_model
from inspectnet.export.int8 import int8_weight_bits, quantizable_nodes, quantize_int8
from inspectnet.export.mixed_precision import (
    fp32_stable,
    grey_level_step,
    keep_in_float,
    run_logits,
    select_fp32_nodes,
)
from inspectnet.export.onnx import calibration_inputs, export_onnx
from inspectnet.runtime.classifier import make_session
from inspectnet.runtime.int8_cpu import int8_cpu_family

TARGET = 0.99
EVAL_SETS = ("photos100:test", "photos:test")


def data(zm) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    cal = np.concatenate([calibration_inputs(zm, "photos100:train", limit=96, labelled=False)[0],
                          calibration_inputs(zm, "photos:train", limit=32, labelled=False)[0]])
    return cal, {spec: calibration_inputs(zm, spec, limit=None) for spec in EVAL_SETS}


def evaluate(s32, s8, sets: dict, stable: dict) -> dict:
    """Per evaluation set: agreement on all / fp32-stable crops, accuracies, the fp32 margins of stable flips."""
    out = {}
    for spec, (x, y) in sets.items():
        l32, l8 = run_logits(s32, x), run_logits(s8, x)
        same = l32.argmax(1) == l8.argmax(1)
        top2 = np.sort(l32, 1)[:, -2:]
        st = stable[spec]
        out[spec] = {"n": len(x), "stable": int(st.sum()), "agree_stable": int(same[st].sum()),
                     "agreement_stable": float(same[st].mean()), "agreement_all": float(same.mean()),
                     "accuracy_fp32": float((l32.argmax(1) == y).mean()), "accuracy_int8": float((l8.argmax(1) == y).mean()),
                     "fp32_margin_of_stable_flips": [round(float(m), 3) for m in (top2[:, 1] - top2[:, 0])[st & ~same]]}
        out[spec]["accuracy_change_points"] = round(100 * (out[spec]["accuracy_int8"] - out[spec]["accuracy_fp32"]), 2)
    agree = sum(r["agree_stable"] for r in out.values())
    total = sum(r["stable"] for r in out.values())
    out["pooled"] = {"agree_stable": agree, "stable": total, "agreement_stable": agree / total}
    return out


def speed(s32, s8, x: np.ndarray, rounds: int, reps: int = 5) -> dict:
    feed = {"input": x[:1]}

    def runs(s):
        return lambda: [s.run(["logits"], feed) for _ in range(reps)]

    t = harness.alternate({"fp32": runs(s32), "int8": runs(s8)}, rounds, cpu=True)
    keep = ("median_s", "q1_s", "q3_s", "iqr_s")
    return {"reps_per_sample": reps, "rounds": rounds,
            **{name: {"wall": {k: v[k] for k in keep}, "cpu": {k: v["cpu"][k] for k in keep}} for name, v in t.items()},
            "speedup_cpu": round(t["fp32"]["cpu"]["median_s"] / t["int8"]["cpu"]["median_s"], 3),
            "speedup_wall": round(t["fp32"]["median_s"] / t["int8"]["median_s"], 3)}


def measure(ks: list[int], rounds: int, max_fp32: int, work: Path, weight_bits: int | None = None) -> dict:
    zm = load_model("shipped:efficientnet_lite0")
    cal, sets = data(zm)
    fp32 = work / "fp32.onnx"
    export_onnx(zm, fp32, latency=False)
    s32 = make_session(fp32, threads=1)
    step = grey_level_step(fp32)
    stable = {spec: fp32_stable(s32, x, step) for spec, (x, _) in sets.items()}
    plain, out = work / "plain.onnx", work / "int8.onnx"
    weight_bits = int8_weight_bits(weight_bits)
    quantize_int8(fp32, plain, cal, weight_bits=weight_bits)
    shutil.copy(plain, out)
    nodes = quantizable_nodes(fp32)
    choice = select_fp32_nodes(fp32, out, cal, nodes, target=TARGET, max_nodes=max_fp32)
    auto = {"kept": choice.kept, "max_fp32": max_fp32, "calibration_agreement_stable": choice.agreement,
            "calibration_stable": choice.stable, "target_met_on_calibration": choice.target_met,
            "steps": choice.steps, **evaluate(s32, make_session(out, threads=1), sets, stable)}
    print(auto, flush=True)
    ranked = list(choice.sensitivity)
    fp32_model, int8_model = onnx.load(str(fp32)), onnx.load(str(plain))
    rows = []
    for k in ks:
        s8 = make_session(keep_in_float(int8_model, fp32_model, ranked[:k]).SerializeToString(), threads=1)
        rows.append({"k": k, "kept": ranked[:k], **evaluate(s32, s8, sets, stable),
                     "speed": speed(s32, s8, sets[EVAL_SETS[0]][0], rounds)})
        print({key: rows[-1][key] for key in ("k", "pooled", "speed")}, flush=True)
    return {"model": "shipped:efficientnet_lite0", "target": TARGET, "weight_bits": weight_bits,
            "int8_cpu_family": int8_cpu_family(), "calibration": len(cal), "nodes": len(nodes),
            "sensitivity_top": dict(list(choice.sensitivity.items())[:12]), "auto": auto, "frontier": rows}


def _emulation_lines(doc: dict) -> list[str]:
    """Where the files carry fewer weight bits than this CPU would get: whose agreement the table gives."""
    if doc["weight_bits"] >= int8_weight_bits():
        return []
    return [f"{doc['weight_bits']}-bit weights on a CPU that gets {int8_weight_bits()}: the agreement and accuracy "
            "columns are those of an AVX2 CPU without VNNI (no int16 pair sum saturates at 7 bits, so both kernels "
            "compute the same integers); the speed columns are this CPU's.", ""]


def _pct(a: int, n: int) -> str:
    return f"{a}/{n} = {a / n:.2%}"


def table(doc: dict, run: dict) -> str:
    cpu = run["cpu"]
    a = doc["auto"]
    p100, ph = EVAL_SETS
    lines = [f"# int8 Lite0 vs fp32 where fp32 is decided ({cpu['model']}, "
             f"{' '.join(cpu['flags']) or 'no listed flags'}; int8 family {doc['int8_cpu_family']}, "
             f"{doc['weight_bits']}-bit weights)", "",
             f"`{run['command']}`. Calibration and node selection: {doc['calibration']} crops (96 photos100:train, "
             f"32 photos:train); evaluation: {p100} (164 crops, sure labels) and {ph} (40 crops). Agreement is "
             "counted on the evaluation crops whose fp32 top-1 survives ±1 grey level of uniform noise. Frontier row k "
             "keeps the k most sensitive of the "
             f"{doc['nodes']} Conv/Gemm nodes in fp32 (ranking measured on the calibration crops).", "",
             *_emulation_lines(doc),
             f"Automatic mixed precision (target {doc['target']:.0%} on the calibration crops, at most "
             f"{a['max_fp32']} nodes): kept {len(a['kept'])} node(s); calibration agreement "
             f"{a['calibration_agreement_stable']:.2%} on {a['calibration_stable']} fp32-stable crops "
             f"(target {'met' if a['target_met_on_calibration'] else 'not met'}); on the evaluation crops "
             f"{_pct(a['pooled']['agree_stable'], a['pooled']['stable'])}; accuracy change "
             f"{a[p100]['accuracy_change_points']:+.1f} points on {p100}, "
             f"{a[ph]['accuracy_change_points']:+.1f} on {ph}.", "",
             f"| k in fp32 | agreement, stable crops (both sets) | {p100} stable | {ph} stable | accuracy Δ {p100} "
             f"(fp32 → int8) | accuracy Δ {ph} | int8 / fp32 speed, batch 1 (CPU; wall) | fp32 / int8 ms (IQR), CPU "
             "| fp32 margins of stable flips |", "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["frontier"]:
        s, reps = r["speed"], r["speed"]["reps_per_sample"]
        ms = "; ".join(f"{1e3 * s[n]['cpu']['median_s'] / reps:.2f} ({1e3 * s[n]['cpu']['iqr_s'] / reps:.2f})"
                       for n in ("fp32", "int8"))
        flips = r[p100]["fp32_margin_of_stable_flips"] + r[ph]["fp32_margin_of_stable_flips"]
        cells = [str(r["k"]), _pct(r["pooled"]["agree_stable"], r["pooled"]["stable"])]
        cells += [_pct(r[spec]["agree_stable"], r[spec]["stable"]) for spec in (p100, ph)]
        cells += [f"{r[spec]['accuracy_change_points']:+.1f} ({r[spec]['accuracy_fp32']:.1%} → "
                  f"{r[spec]['accuracy_int8']:.1%})" for spec in (p100, ph)]
        cells += [f"{s['speedup_cpu']:.2f}× ; {s['speedup_wall']:.2f}×", ms, ", ".join(map(str, flips)) or "—"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Most sensitive nodes (drop of the mean KL(fp32 ‖ int8) on the calibration crops when kept alone): "
              + ", ".join(f"{n} {v:.2g}" for n, v in doc["sensitivity_top"].items()) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2, 3, 4, 6, 8])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--max-fp32", type=int, default=4, help="the automatic selection's cap (export --int8-max-fp32)")
    ap.add_argument("--name", default="int8_agreement", help="results name (keep CPUs of different int8 families apart)")
    ap.add_argument("--weight-bits", type=int, choices=(7, 8), help="default: the bits this CPU gets (7 on AVX2 "
                                                                     "without VNNI)")
    args = ap.parse_args(argv)
    run = harness.start()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="inspectnet-agree-") as tmp:
        doc = measure(sorted(set(args.ks)), args.rounds, args.max_fp32, Path(tmp), args.weight_bits)
    md = table(doc, run)
    harness.write_results(args.name, doc, md, run)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
