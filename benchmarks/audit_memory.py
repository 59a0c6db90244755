"""Peak memory of the audit of a 1000-class model: N vs 4N images, and C = 1000 vs C = 10.

The audit (probe -> decomposition -> rules -> sparsity -> linear probes -> attributions -> card) of
EfficientNet-Lite0 with its real ImageNet weights (input reduced to 64 px to keep the run short), on
the labelled photo crops (``photos``: tabby, espresso, missile, tripod, mapped by WordNet id onto
the model's 1000 classes). The C = 10 model is the same backbone with a fresh 10-class head
(``--num-classes 10 --reset-head``), the four photo classes mapped onto its classes 0-3 by a class
map. Each configuration runs in a fresh process; its peak resident set size (``ru_maxrss``) is read
at the end. Targets: 4N within +15 % of N, and C = 1000 within +25 % of C = 10.

The decomposition stage once held an (N, C, d) float32 array: at C = 1000, d = 1280 that
is 5.1 MB per image, 4.1 GB for 800 images; it now keeps per-class sums (C x d).

Run: python -m benchmarks audit_memory [--n 200] (writes benchmarks/results/audit_memory.{json,md})
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import harness

INPUT_SIZE = 64
# photos:train?n=T holds 80 % of T crops (test the rest), so T = 1.25 N gives N fitting images
TRAIN_SHARE = 0.8


def child(num_classes: int, n: int) -> None:
    """One audit in this process; prints the peak RSS in KiB and the audit's figures as JSON."""
    import torch

    from inspectnet import AuditConfig, load_model, run_audit
    from inspectnet.data.sources import LABELLED_PHOTOS

    torch.set_num_threads(2)
    total = int(round(n / TRAIN_SHARE))
    if num_classes == 1000:
        zm, class_map = load_model("shipped:efficientnet_lite0", input_size=INPUT_SIZE), None
    else:
        torch.manual_seed(0)
        zm = load_model("shipped:efficientnet_lite0", num_classes=num_classes, reset_head=True, input_size=INPUT_SIZE)
        class_map = {wnid: k for k, (_, wnid) in enumerate(LABELLED_PHOTOS)}
    config = AuditConfig(data=f"photos:train?n={total}", eval_data=f"photos:test?n={total}", limit=None,
                         eval_limit=None, class_map=class_map, batch_size=32, device="cpu")
    with tempfile.TemporaryDirectory(prefix="inspectnet-audit-memory-") as tmp:
        doc = run_audit(zm, config, Path(tmp) / "audit", log=None)
    probe = doc["sections"]["probe"]["result"]
    print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "fit_images": probe["train"]["samples"], "eval_images": probe["eval"]["samples"],
                      "failed": [k for k, v in doc["sections"].items() if v["status"] != "ok"],
                      "seconds": doc["timing"]["total_seconds"]}))


def measure(num_classes: int, n: int) -> dict:
    out = subprocess.run(harness.self_command("audit_memory", "--child", str(num_classes), str(n)),
                         capture_output=True, text=True, check=True, cwd=harness.ROOT)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {"num_classes": num_classes, "n": n, "peak_rss_mib": row["peak_rss_kib"] / 1024,
            **{k: row[k] for k in ("fit_images", "eval_images", "failed", "seconds")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="N fitting images (the large run uses 4N)")
    ap.add_argument("--child", nargs=2, type=int, metavar=("CLASSES", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # one measured audit, in the fresh process measure() started
        child(*args.child)
        return 0
    run = harness.start()
    rows = [measure(c, n) for c in (1000, 10) for n in (args.n, 4 * args.n)]
    peak = {(r["num_classes"], r["n"]): r["peak_rss_mib"] for r in rows}
    big = 4 * args.n
    ratios = {"n4_vs_n_c1000": peak[1000, big] / peak[1000, args.n] - 1,
              "n4_vs_n_c10": peak[10, big] / peak[10, args.n] - 1,
              "c1000_vs_c10_at_4n": peak[1000, big] / peak[10, big] - 1}
    doc = {"model": f"shipped:efficientnet_lite0 at {INPUT_SIZE} px", "rows": rows, "growth": ratios}
    lines = ["| classes C | fitting images | eval images | peak RSS | audit wall time | failed stages |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['num_classes']} | {r['fit_images']} | {r['eval_images']} | {r['peak_rss_mib']:.0f} MiB | "
              f"{r['seconds']:.0f} s | {', '.join(r['failed']) or 'none'} |" for r in rows]
    lines += ["", "| growth | measured | target |", "|---|---|---|",
              f"| 4N vs N images, C = 1000 | {100 * ratios['n4_vs_n_c1000']:+.1f} % | <= +15 % |",
              f"| 4N vs N images, C = 10 | {100 * ratios['n4_vs_n_c10']:+.1f} % | (reference) |",
              f"| C = 1000 vs C = 10, {big} images | {100 * ratios['c1000_vs_c10_at_4n']:+.1f} % | <= +25 % |",
              "", f"Each row is one fresh process, audit of {doc['model']} on the "
              f"labelled photo crops; peak resident set size from `ru_maxrss`."]
    harness.write_results("audit_memory", doc, "\n".join(lines), run)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
