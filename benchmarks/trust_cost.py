"""What the default audit's trust stage costs: the same audit with and without it, side by side.

The shipped EfficientNet-Lite0 at 224 px is audited on ``photos100`` crops with the default options
(``--limit 512``, no export, no concepts, no ``--explain-images``), once with the trust stage
(``--trust-images 16``, the default) and once without (``--trust-images 0``), each into a fresh
folder, alternated round by round (:func:`benchmarks.harness.alternate`: round r starts at the r-th
variant) after one untimed small audit that pays the first imports. Reported: median and IQR of wall
and process CPU seconds of each variant, the ratio of the medians and the per-round ratios (CPU time
is the figure: other jobs on a shared machine inflate it far less than wall time), and the trust
stage's own seconds from card.json.

Run: python -m benchmarks trust_cost [--rounds 3] [--limit 512] [--threads 1]
(writes benchmarks/results/trust_cost.{json,md})
"""

import argparse
import dataclasses
import shutil
import statistics
import sys
from pathlib import Path

import torch

from benchmarks import harness


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=512, help="photos100 crops the audit probes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the shared machine's fair share)")
    ap.add_argument("--work", default="runs/bench_trust_cost")
    args = ap.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(args.threads)
    from inspectnet import load_model
    from inspectnet.pipelines.audit import AuditConfig, run_audit

    zm, work = load_model("shipped:efficientnet_lite0"), Path(args.work)
    config = AuditConfig(data="photos100", limit=args.limit)
    docs: dict[str, list] = {"with trust": [], "without trust": []}

    def audit(name: str, cfg: AuditConfig):
        def call():
            out = work / f"{name.replace(' ', '_')}_{len(docs[name])}"
            shutil.rmtree(out, ignore_errors=True)
            docs[name].append(run_audit(zm, cfg, out, log=None))
        return call

    run_audit(zm, dataclasses.replace(config, limit=16, trust_images=2), work / "warmup", log=None)
    timing = harness.alternate({"with trust": audit("with trust", config),
                                "without trust": audit("without trust", dataclasses.replace(config, trust_images=0))},
                               args.rounds, warmup=0, cpu=True)
    w, wo = timing["with trust"], timing["without trust"]
    per_round = [a / b for a, b in zip(w["cpu"]["samples_s"], wo["cpu"]["samples_s"])]
    trust = [d["sections"]["trust"] for d in docs["with trust"]]
    result = trust[0]["result"]
    doc = {"model": zm.spec, "data": "photos100", "limit": args.limit, "rounds": args.rounds, "timing": timing,
           "cpu_ratio_of_medians": w["cpu"]["median_s"] / wo["cpu"]["median_s"],
           "wall_ratio_of_medians": w["median_s"] / wo["median_s"], "cpu_ratios_per_round": per_round,
           "trust_stage_wall_s": [t["seconds"] for t in trust], "trust_images": result["images"],
           "trust_steps": result["steps"], "forward_passes": result["forward_passes"],
           "verdicts": {m: v["vs_random"]["beats_control"] for m, v in result["methods"].items() if v["vs_random"]},
           "target": "with trust ≤ 1.5 × without"}
    lines = ["# Trust stage cost: the default audit with and without it", "",
             f"{zm.spec} at 224 px, photos100 (limit {args.limit}), default options; {args.rounds} alternated rounds, "
             f"torch threads {torch.get_num_threads()}; trust: {result['images']} images, {result['steps']} steps, "
             f"{result['forward_passes']} forward passes.", "",
             "| audit | CPU s median | CPU IQR | wall s median | wall IQR |", "|---|---|---|---|---|"]
    for name, t in timing.items():
        lines.append(f"| {name} | {t['cpu']['median_s']:.1f} | {t['cpu']['iqr_s']:.1f} | {t['median_s']:.1f} | "
                     f"{t['iqr_s']:.1f} |")
    lines += ["", f"**CPU ratio with / without: {doc['cpu_ratio_of_medians']:.3f}×** (per round: "
              + ", ".join(f"{q:.3f}×" for q in per_round) + f"; wall ratio {doc['wall_ratio_of_medians']:.3f}×; "
              f"target ≤ 1.5×). Trust stage wall s per run: " + ", ".join(f"{s:.1f}" for s in doc["trust_stage_wall_s"])
              + f" (median {statistics.median(doc['trust_stage_wall_s']):.1f}). Beats the random control: "
              + ", ".join(f"{m} {'yes' if v else 'no'}" for m, v in doc["verdicts"].items()) + "."]
    harness.write_results("trust_cost", doc, "\n".join(lines), run)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
