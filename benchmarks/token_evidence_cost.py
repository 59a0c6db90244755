"""What exact token evidence costs: CPU seconds per image of a plain forward pass versus
``TokenEvidence`` (logits + evidence maps for all 1000 classes + remainder), in torch and in ONNX
Runtime, for the transformer families it covers, at 224 px with random weights (the cost does not
depend on the weights). The heads are re-drawn N(0, 1/D) with N(0, 0.1²) biases: some initialisers
start them at zero or near it (torchvision's ViT, BEiT), which would make the sum check trivial.

CPU time of this process (``time.process_time``) with one intra-op thread in both engines, so other
work on the machine inflates it less than wall time; plain and evidence runs alternate round by round.
Also checks, per family and engine, that evidence + remainder + bias equals the logits.

Run: python -m benchmarks token_evidence_cost [--rounds 3] [--batch 4] [--families vit_tiny deit_tiny]

Writes benchmarks/results/token_evidence_cost.{json,md}.
"""

import argparse
import io
import json
import time
import warnings

import numpy as np
import torch

from benchmarks import harness
from inspectnet.analysis.explain.token_evidence import TokenEvidence
from inspectnet.models.zoo import load_model
from inspectnet.runtime.classifier import make_session

FAMILIES = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
            "deit_tiny_distilled": "deit_tiny_distilled_patch16_224", "beit_base": "beit_base_patch16_224",
            "torchvision_vit_b_16": "torchvision:vit_b_16"}


def cpu_seconds(fn, x, reps: int = 1) -> float:
    t0 = time.process_time()
    for _ in range(reps):
        fn(x)
    return (time.process_time() - t0) / reps


def onnx_session(module: torch.nn.Module, x: torch.Tensor, outputs: list[str]):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, input_names=["input"], output_names=outputs,
                          dynamic_axes={k: {0: "batch"} for k in ["input", *outputs]}, opset_version=17)
    return make_session(buf.getvalue(), providers=["CPUExecutionProvider"], threads=1)


def measure(name: str, spec: str, rounds: int, batch: int) -> dict:
    zm = load_model(spec, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for path, m in zm.model.named_modules():
            if isinstance(m, torch.nn.Linear) and path in ("head", "head_dist", "heads.head"):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * m.in_features ** -0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    module = TokenEvidence(zm).eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    t0 = time.process_time()
    plain_ort = onnx_session(zm.model, x, ["logits"])
    evidence_ort = onnx_session(module, x, ["logits", "evidence", "remainder"])
    export_s = time.process_time() - t0
    xn = x.numpy()
    engines = {"torch_plain": lambda a: zm.model(a), "torch_evidence": lambda a: module(a),
               "ort_plain": lambda a: plain_ort.run(None, {"input": xn}),
               "ort_evidence": lambda a: evidence_ort.run(None, {"input": xn})}
    times = {k: [] for k in engines}
    with torch.no_grad():
        for r in range(rounds):
            for k in (engines if r % 2 == 0 else reversed(list(engines))):
                times[k].append(cpu_seconds(engines[k], x) / batch)
        logits, evidence, remainder = module(x)
    bias = module.bias().detach()
    scale = 1.0 + float(logits.abs().max())
    torch_gap = float((evidence.sum((2, 3)) + remainder + bias - logits).abs().max()) / scale
    lo, ev, re = evidence_ort.run(None, {"input": xn})
    ort_gap = float(np.abs(ev.sum((2, 3)) + re + bias.numpy() - lo).max()) / scale
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"family": name, "spec": zm.spec, "batch": batch, "rounds": rounds, "grid": list(evidence.shape[2:]),
            "cpu_s_per_image": med, "torch_ratio": med["torch_evidence"] / med["torch_plain"],
            "ort_ratio": med["ort_evidence"] / med["ort_plain"], "export_cpu_s": export_s,
            "invariant_rel_gap": {"torch": torch_gap, "ort": ort_gap}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    args = ap.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(1)
    rows = [measure(f, FAMILIES[f], args.rounds, args.batch) for f in args.families]
    lines = [f"# Token evidence cost (CPU s per image, 1 thread, batch {args.batch}, 224 px, 1000 classes)", "",
             "| family | grid | torch plain | torch evidence | ratio | ORT plain | ORT evidence | ratio | "
             "Σ gap torch / ORT |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cpu_s_per_image"]
        lines.append(f"| {r['family']} | {r['grid'][0]}×{r['grid'][1]} | {c['torch_plain']:.3f} | "
                     f"{c['torch_evidence']:.3f} | {r['torch_ratio']:.2f} | {c['ort_plain']:.3f} | "
                     f"{c['ort_evidence']:.3f} | {r['ort_ratio']:.2f} | {r['invariant_rel_gap']['torch']:.1e} / "
                     f"{r['invariant_rel_gap']['ort']:.1e} |")
    harness.write_results("token_evidence_cost", {"rows": rows}, "\n".join(lines), run)
    print("\n".join(lines))
    print(json.dumps({r["family"]: r["cpu_s_per_image"] for r in rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
