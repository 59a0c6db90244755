"""int8 EfficientNet-Lite0 with 8-bit and 7-bit weights on this CPU: fused kernels vs the file's QDQ maths.

On x86 AVX2 without VNNI ONNX Runtime's fused u8 x s8 kernels add pairs of products in 16 bits and clip
(inspectnet therefore quantizes weights to 7 bits there, :func:`inspectnet.export.int8.saturating_int8_cpu`).
This measures, on the crops of the int8_sensitivity benchmark (calibration 96 crops seed 1, agreement 120 crops
seed 2), top-1 agreement with fp32 for each weight precision, run fused (ORT's default) and unfused
(ORT_DISABLE_ALL: DequantizeLinear + float ops, the QDQ maths a VNNI CPU's fused kernels match), and the
batch-1 speed of the fused int8 file against fp32, timed interleaved. The CPU model and its flags
(AVX2, AVX-512 VNNI, ...) are in the result's environment; ``--name`` keeps runs on CPUs of either
kind side by side.

Run: python -m benchmarks int8_weight_bits --threads 1 [--name int8_weight_bits_vnni]
"""

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks import harness
from benchmarks.export_latency import photo_crops
from benchmarks.int8_sensitivity import agreement, batch1_ratio, logits
from inspectnet import load_model
from inspectnet.export.int8 import quantize_int8, saturating_int8_cpu
from inspectnet.export.onnx import export_onnx
from inspectnet.runtime.classifier import make_session


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="int8_weight_bits",
                   help="results name: keep runs on CPUs of different int8 kernels (AVX2 only, VNNI) side by side")
    args = p.parse_args(argv)
    run = harness.start()
    import torch

    torch.set_num_threads(args.threads)
    zm = load_model("shipped:efficientnet_lite0")
    cal, x = photo_crops(zm, 12, seed=1)[0], photo_crops(zm, 15, seed=2)[0]
    doc = {"threads": args.threads, "saturating_int8_cpu": saturating_int8_cpu(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "m.onnx"
        export_onnx(zm, fp32, latency=False)
        s32 = make_session(fp32, threads=args.threads)
        l32 = logits(s32, x)
        for bits in (8, 7):
            q = Path(tmp) / f"m{bits}.onnx"
            quantize_int8(fp32, q, cal, weight_bits=bits)
            fused = make_session(q, threads=args.threads)
            row = {"weight_bits": bits, "fused": agreement(l32, logits(fused, x)),
                   "unfused": agreement(l32, logits(make_session(q, threads=args.threads, optimize=False), x)),
                   "int8_speedup_batch1": batch1_ratio(s32, fused, x)}
            doc["rows"].append(row)
            print(json.dumps(row), flush=True)
    cpu = run["cpu"]
    lines = [f"# int8 Lite0: 8-bit vs 7-bit weights, fused vs QDQ maths ({cpu['model']}, flags "
             f"{' '.join(cpu['flags']) or 'none listed'}; saturating: {doc['saturating_int8_cpu']})", "",
             f"`{run['command']}` — calibration 96 photo crops (seed 1), agreement 120 crops (seed 2), bias-corrected.", "",
             "| weights | agreement fused (ORT default) | where fp32 prob ≥ 0.3 | agreement unfused (QDQ maths) | "
             "where fp32 prob ≥ 0.3 | int8 / fp32 speed, batch 1 |", "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        f, u = r["fused"], r["unfused"]
        lines.append(f"| {r['weight_bits']}-bit | {f['top1_agreement']:.1%} | {f['agreement_where_confident']:.1%} "
                     f"({f['confident']}) | {u['top1_agreement']:.1%} | {u['agreement_where_confident']:.1%} | "
                     f"{r['int8_speedup_batch1']}× |")
    harness.write_results(args.name, doc, "\n".join(lines), run)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
