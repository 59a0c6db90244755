"""Sparsely Activated Networks on MNIST, the paper's Table III layout: per sparse activation, the
kernel size with the lowest validation φ̄ and its φ̄, CR⁻¹ and L̃, over several seeds.

As in the paper (§IV-C): q = 2 kernels initialised from N(0, 0.1), Adam lr 0.01, batch 64, no
preprocessing; Peaks' minimum distance and Max-Pool's window equal the kernel size m, and
Max-Activations keeps k = ⌊28/m⌋² per map (equal activation counts). Ours: mnist5k (4,000
training and 1,000 validation digits instead of 50,000 / 10,000), 5 epochs instead of 20, odd
kernel sizes 1, 3, 5, 7 (the reconstruction is a same-size adjoint convolution) and the model of
the last epoch (the paper picks the best epoch). CUDA is not needed (two small kernels).

Run: python -m benchmarks san_table3 [--seeds 3] [--epochs 5]  (writes benchmarks/results/san_table3.{json,md})
"""

import argparse
import collections
import time

import torch

from benchmarks import harness
from benchmarks.paired_stats import mean_std
from inspectnet.analysis.san.activations import ACTIVATIONS
from inspectnet.analysis.san.model import images_tensor, san_select
from inspectnet.data import load_data

PAPER = {  # Table III (MNIST): (m, CR⁻¹, L̃, φ̄) of the row with the best φ̄
    "identity": (2, 0.63, 0.00, 0.31), "max-activations": (1, 0.58, 0.00, 0.29),
    "max-pool-indices": (1, 0.58, 0.00, 0.29), "peaks": (3, 0.03, 0.66, 0.34)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--sizes", default="1,3,5,7")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    x_train = images_tensor(load_data("mnist5k:train"))
    x_val = images_tensor(load_data("mnist5k:test"))
    t0 = time.perf_counter()
    per_seed = []
    for seed in range(args.seeds):
        r = san_select(x_train, x_val, ACTIVATIONS, sizes, kernels=2, epochs=args.epochs, seed=seed)
        per_seed.append(r.to_dict())
        print(r.table(), flush=True)
    seconds = time.perf_counter() - t0
    summary = {}
    for act in ACTIVATIONS:
        chosen = [next(row for row in s["rows"] if row["activation"] == act and row["size"] == s["selected"][act])
                  for s in per_seed]
        summary[act] = {"sizes": dict(collections.Counter(row["size"] for row in chosen)),
                        **{k: mean_std([row[k] for row in chosen], 3)
                           for k in ("phi_bar", "cr_inv", "l_tilde", "activations_per_sample")}}
    doc = {"command": run["command"], "seconds": round(seconds, 1), "threads": args.threads,
           "train_samples": len(x_train), "val_samples": len(x_val), "kernels": 2, "epochs": args.epochs,
           "sizes": sizes, "summary": summary, "paper": PAPER, "per_seed": per_seed}
    lines = ["# SAN on MNIST (paper Table III layout)", "", f"Reproduce: `{doc['command']}` ({seconds:.0f} s, "
             f"{args.threads} thread(s), shared CPU). mnist5k: {len(x_train)} training / {len(x_val)} validation "
             f"digits, 2 kernels, {args.epochs} epochs, kernel size chosen from {args.sizes} by validation φ̄; "
             f"mean ± std over {args.seeds} seeds of the selected model; paper's best row in brackets.", "",
             "| activation | selected m (seeds) | φ̄ | CR⁻¹ | L̃ | activations per image |", "|---|---|---|---|---|---|"]
    for act, s in summary.items():
        m, cr, lt, phi = PAPER[act]
        sizes_text = ", ".join(f"{k}×{v}" for k, v in sorted(s["sizes"].items()))
        lines.append(f"| {act} | {sizes_text} [{m}] | {s['phi_bar']} [{phi}] | {s['cr_inv']} [{cr}] | "
                     f"{s['l_tilde']} [{lt}] | {s['activations_per_sample']} |")
    lines.append("")
    harness.write_results("san_table3", doc, "\n".join(lines), run)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
