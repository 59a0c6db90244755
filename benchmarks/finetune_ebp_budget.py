"""EBP vs vanilla at a longer budget: 2 epochs, lr 0.05, all of mnist5k:train, from the ResNet18 checkpoint
that ``python -m benchmarks finetune_plugins`` trains (cached in --work; trained here if missing).

Reports mnist5k:test accuracy and the Hoyer sparsity of layer4 (mean over the test images of the
Hoyer measure of A_i = per-filter spatial mean of |F|), for vanilla, EBP with the paper's λ = 1e-3,
and EBP with λ = 0.1 (K = 25 throughout).

Run: python -m benchmarks finetune_ebp_budget [--work runs/bench/finetune]
Writes benchmarks/results/finetune_ebp_budget.{json,md}.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.finetune_plugins import base_model, layer_hoyer
from inspectnet import load_data, load_model
from inspectnet.training.finetune import finetune
from inspectnet.training.loop import TrainConfig, evaluate

RUNS = {"vanilla": [], "ebp (λ=1e-3)": ["ebp:K=25,lam=1e-3,layer=layer4"],
        "ebp (λ=0.1)": ["ebp:K=25,lam=0.1,layer=layer4"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/bench/finetune")
    args = p.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(1)
    work = Path(args.work)
    base = base_model(work)
    config = TrainConfig(epochs=2, lr=0.05, batch_size=64)
    rows = {}
    for i, (name, specs) in enumerate(RUNS.items()):
        zm = load_model(base)
        train_ds, test_ds = load_data("mnist5k:train", zm.transform()), load_data("mnist5k:test", zm.transform())
        t0 = time.perf_counter()
        r = finetune(zm, train_ds, work / f"budget_{i}", specs, config, device="cpu")
        rows[name] = {"plugins": r.plugins, "accuracy": evaluate(zm, test_ds, device="cpu"),
                      "hoyer_layer4": layer_hoyer(zm, test_ds, "layer4", 1000),
                      "finetune_s": time.perf_counter() - t0, "last_epoch": r.history[-1]}
        print(name, json.dumps(rows[name]), flush=True)
    van = rows["vanilla"]
    lines = ["EBP vs vanilla, ResNet18 on mnist5k, fine-tuned 2 epochs (lr 0.05 cosine, batch 64, all 4000 "
             "training images) from the same checkpoint; CPU.", "",
             "| run | test accuracy | Δ accuracy (points) | Hoyer layer4 | Δ Hoyer |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - van['accuracy']):+.1f} | "
                     f"{r['hoyer_layer4']:.3f} | {r['hoyer_layer4'] - van['hoyer_layer4']:+.3f} |")
    harness.write_results("finetune_ebp_budget", {"config": vars(config), "rows": rows}, "\n".join(lines), run)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
