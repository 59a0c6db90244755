"""Concept Group Learning, paper Table 1: unique concept detectors of a 2-layer CNN on synthetic shapes.

The paper (Varshneya et al., §4.1, Table 1) trains a CNN with two 3×3 conv layers (128 and 256
filters) on the binary task "a square is present" with (a) weight decay, (b) the block-norm
regularizer R_bn instead, (c) R_bn + group activation loss L_g + spatial loss L_s, and counts the
unique Network Dissection detectors per concept category at conv1 and conv2 (15 concepts: 3
colours, 3 shapes, 9 colour-shapes). Paper, conv2: 10 / 12 / 14 of 15.

This script trains the regimes with the same seeds, data and epochs, dissects conv1 and conv2 with
:func:`inspectnet.analysis.dissect.dissection.dissect` on held-out shapes images, and writes
mean ± std over seeds beside the paper's numbers with paired comparisons (bootstrap interval and
exact sign-flip test of the per-seed differences). All CGL terms come from the ``cgl`` fine-tuning
plugin (``inspectnet_plugins.cgl``); regime (b) is the plugin with λ_g = λ_s = 0. The plugin's
per-epoch log (P1, P2, L_g, L_s, spread of ψ) is kept for every run. To stay within a CPU budget
conv1 has stride 2 and is followed by a 2× max-pool (conv1 maps are 32×32, conv2 maps 16×16, both
upsampled to the 64×64 masks for dissection) and the head is a global max-pool (presence task);
the widths are halved (64 and 128 filters; ``--widths 128,256`` is the paper's); the paper gives
no training details for this experiment (epochs, λ's, groups), so ours are stated in the output.
CUDA is used when present.

Run: python -m benchmarks cgl_table1 [--seeds 0,1,2,3,4] [--out benchmarks/results/cgl_table1]
(writes benchmarks/results/cgl_table1.{json,md}, rewritten after every seed).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from inspectnet_plugins.cgl import ConceptGroupLearning
from torch import nn

from benchmarks import harness
from benchmarks.paired_stats import describe, mean_std, paired
from inspectnet.analysis.dissect.dissection import dissect
from inspectnet.data import shapes as shapes_mod
from inspectnet.data.concepts import ArrayConcepts

PAPER = {  # Table 1: (colour, shape, colour-shape, total)
    "weight_decay": {"conv1": (3, 0, 4, 7), "conv2": (3, 0, 7, 10)},
    "r_bn": {"conv1": (3, 2, 4, 9), "conv2": (3, 2, 7, 12)},
    "r_bn+l_g+l_s": {"conv1": (3, 3, 5, 11), "conv2": (3, 2, 9, 14)},
}
CATEGORIES = ("colour", "shape", "colour-shape")
PLAIN = {"input_size": (3, 64, 64), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


class TwoLayerCNN(nn.Module):
    """conv1 (3→w1, 3×3, stride) → ReLU → max-pool → conv2 (w1→w2, 3×3) → ReLU → global max → linear."""

    def __init__(self, num_classes: int = 2, pool: int = 2, stride: int = 2, widths: tuple[int, int] = (128, 256)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=stride, padding=1)
        self.pool = nn.MaxPool2d(pool) if pool > 1 else nn.Identity()
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, padding=1)
        self.fc = nn.Linear(widths[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.relu(self.conv2(self.pool(F.relu(self.conv1(x)))))
        # "is a square present" is an existence question: global max pooling answers it directly
        return self.fc(f.amax(dim=(2, 3)))


def plugin_for(regime: str, seed: int, args) -> ConceptGroupLearning | None:
    if regime == "weight_decay":
        return None
    full = regime == "r_bn+l_g+l_s"
    return ConceptGroupLearning(layers="conv1|conv2", groups=args.groups, lam_bn=args.lam_bn,
                                lam_g=args.lam_g if full else 0.0, lam_s=args.lam_s if full else 0.0,
                                P=args.P, seed=seed)


def train_one(regime: str, seed: int, x: torch.Tensor, y: torch.Tensor, args,
              dev: torch.device) -> tuple[TwoLayerCNN, list[dict]]:
    torch.manual_seed(seed)
    model = TwoLayerCNN(pool=args.pool, stride=args.stride, widths=args.widths).to(dev)
    plugin = plugin_for(regime, seed, args)
    if plugin is not None:
        plugin.attach(model, num_classes=2)
    conv_w = [model.conv1.weight, model.conv2.weight]
    others = [p for p in model.parameters() if all(p is not w for w in conv_w)]
    groups = [{"params": conv_w, "weight_decay": args.weight_decay if plugin is None else 0.0},
              {"params": others, "weight_decay": args.weight_decay}]
    if plugin is not None and plugin.parameters():
        groups.append({"params": plugin.parameters(), "weight_decay": 0.0})
    opt = torch.optim.Adam(groups, lr=args.lr)
    n, steps = len(x), 0
    total = args.epochs * ((n + args.batch_size - 1) // args.batch_size)
    log = []
    model.train()
    for epoch in range(args.epochs):
        if plugin is not None:
            plugin.epoch_begin(epoch, model)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        ce_sum = 0.0
        for s in range(0, n, args.batch_size):
            idx = order[s:s + args.batch_size]
            for g in opt.param_groups:
                g["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * steps / total))
            xb, yb = x[idx].to(dev), y[idx].to(dev)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            ce_sum += float(loss.detach()) * len(idx)
            if plugin is not None:
                loss = loss + sum(plugin.loss(xb, yb, logits).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        entry = {"epoch": epoch + 1, "ce": round(ce_sum / n, 4)}
        if plugin is not None:
            entry.update({k: round(v, 4) for k, v in plugin.epoch_end(epoch).items() if not k.startswith("beta/")})
        log.append(entry)
    if plugin is not None:
        plugin.detach()
    model.eval()
    return model, log


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dev: torch.device) -> float:
    with torch.inference_mode():
        pred = torch.cat([model(x[s:s + 256].to(dev)).argmax(1).cpu() for s in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def shapes_tensors(n: int, seed: int):
    images, masks, pairs = shapes_mod.generate(n, seed)
    labels, _ = shapes_mod.labels_for(pairs, "square")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return images, masks, x, torch.from_numpy(labels)


def uniform_spatial_loss(args) -> float:
    """L_s (summed over conv1, conv2) of a spatially uniform ψ: what an inactive L_s stays at."""
    side1 = 64 // args.stride
    return sum(float(ConceptGroupLearning.spatial_loss(torch.ones(1, 1, s, s))) for s in (side1, side1 // args.pool))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--widths", type=lambda t: tuple(int(v) for v in t.split(",")), default=(64, 128),
                   help="filters of conv1,conv2 (paper: 128,256; halved for the CPU budget)")
    p.add_argument("--train-images", type=int, default=1500)
    p.add_argument("--dissect-images", type=int, default=300)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--pool", type=int, default=2, help="max-pool size between conv1 and conv2")
    p.add_argument("--stride", type=int, default=2, help="conv1 stride")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lam-bn", type=float, default=2e-3)
    p.add_argument("--lam-g", type=float, default=0.01, help="λ_g (L_g summed over groups and layers)")
    p.add_argument("--lam-s", type=float, default=1.0, help="λ_s (L_s summed over layers)")
    p.add_argument("--groups", type=int, default=16, help="concept groups per conv layer")
    p.add_argument("--P", default="learned", choices=["learned", "bounded", "fixed"], help="the plugin's P1/P2 mode")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--regimes", default="weight_decay,r_bn,r_bn+l_g+l_s")
    p.add_argument("--out", default=str(harness.RESULTS / "cgl_table1"), help="results path without suffix")
    args = p.parse_args(argv)
    bench = harness.start()
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seeds = [int(s) for s in args.seeds.split(",")]
    regimes = args.regimes.split(",")
    _, _, x_tr, y_tr = shapes_tensors(args.train_images, seed=0)
    d_img, d_masks, x_te, y_te = shapes_tensors(args.dissect_images, seed=10_000)
    concepts = ArrayConcepts(f"shapes?n={args.dissect_images}&seed=10000", d_img, d_masks,
                             list(shapes_mod.CONCEPTS), dict(shapes_mod.CATEGORIES))
    runs = []
    for seed in seeds:  # seed-major: partial results always compare all regimes
        for regime in regimes:
            t0 = time.perf_counter()
            model, log = train_one(regime, seed, x_tr, y_tr, args, dev)
            t_train = time.perf_counter() - t0
            d = dissect(model, concepts, "conv1,conv2", data_config=PLAIN, batch_size=50, device=str(dev),
                        show_progress=False)
            run = {"regime": regime, "seed": seed, "test_accuracy": round(accuracy(model, x_te, y_te, dev), 4),
                   "base_rate": round(float(max(y_te.float().mean(), 1 - y_te.float().mean())), 4),
                   "train_s": round(t_train, 1), "log": log}
            for layer, info in d.layers.items():
                run[layer] = {"unique_by_category": info["unique_by_category"],
                              "unique_detectors": info["unique_detectors"], "detectors": info["detectors"],
                              "concepts": sorted(info["detector_concepts"])}
            runs.append(run)
            print(json.dumps({k: v for k, v in run.items() if k != "log"} | {"last": log[-1]}), flush=True)
            done = sorted({r["seed"] for r in runs if all(any(x["seed"] == r["seed"] and x["regime"] == g
                                                             for x in runs) for g in regimes)})
            if done:
                write([r for r in runs if r["seed"] in done], regimes, done, args, str(dev), bench)
    return 0


def write(runs: list[dict], regimes: list[str], seeds: list[int], args, device: str, bench: dict) -> None:
    """Write the JSON and Markdown results of the runs finished so far (rewritten after every run)."""
    doc = {"device": device, "settings": {k: v for k, v in vars(args).items() if k != "out"},
           "network": (f"conv1 3→{args.widths[0]} 3×3 stride {args.stride}, ReLU, maxpool {args.pool}, conv2 "
                       f"{args.widths[0]}→{args.widths[1]} 3×3, ReLU, global max, linear {args.widths[1]}→2"),
           "uniform_L_s": round(uniform_spatial_loss(args), 4),
           "paper": PAPER, "summary": summarise(runs, regimes), "paired": comparisons(runs, regimes),
           "runs": runs}
    out = Path(args.out)
    harness.write_results(out.name, doc, markdown(doc, regimes, seeds, bench["command"]), bench, out=out.parent)


def summarise(runs: list[dict], regimes: list[str]) -> dict:
    out = {}
    for regime in regimes:
        rs = [r for r in runs if r["regime"] == regime]
        out[regime] = {"test_accuracy": mean_std([100 * r["test_accuracy"] for r in rs], 1)}
        for layer in ("conv1", "conv2"):
            cols = [[r[layer]["unique_by_category"][c] for r in rs] for c in CATEGORIES]
            out[regime][layer] = {c: mean_std(v, 1) for c, v in zip(CATEGORIES, cols)}
            out[regime][layer]["total"] = mean_std([r[layer]["unique_detectors"] for r in rs], 1)
        logs = [r["log"][-1] for r in rs if "L_s" in r["log"][-1]]
        if logs:
            out[regime]["last_epoch"] = {k: mean_std([g[k] for g in logs], 3) for k in ("P1", "P2", "L_g", "L_s",
                                                                                         "psi_std")}
            out[regime]["first_epoch"] = {k: mean_std([r["log"][0][k] for r in rs], 3) for k in ("L_s", "psi_std")}
    return out


def comparisons(runs: list[dict], regimes: list[str]) -> dict:
    """Per-seed paired differences of the conv2 (and conv1) unique-detector totals between regimes."""
    by = {(r["regime"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    out = {}
    for a, b in (("r_bn", "weight_decay"), ("r_bn+l_g+l_s", "weight_decay"), ("r_bn+l_g+l_s", "r_bn")):
        if a in regimes and b in regimes:
            for layer in ("conv1", "conv2"):
                out[f"{a} − {b} ({layer})"] = paired([by[a, s][layer]["unique_detectors"] for s in seeds],
                                                     [by[b, s][layer]["unique_detectors"] for s in seeds])
    return out


def markdown(doc: dict, regimes: list[str], seeds: list[int], command: str) -> str:
    s = doc["settings"]
    lines = ["# CGL Table 1 on synthetic shapes (binary task 'square present')", "",
             f"`{command}` ({doc['device']})", "",
             f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {s['train_images']} training images, "
             f"{s['epochs']} epochs, Adam lr {s['lr']} cosine, batch {s['batch_size']}; weight decay "
             f"{s['weight_decay']} (regime a: all weights; b, c: linear layer only), λ_bn {s['lam_bn']}, "
             f"λ_g {s['lam_g']}, λ_s {s['lam_s']}, {s['groups']} groups per conv layer, P1/P2 {s['P']}; CGL terms "
             f"from inspectnet_plugins.cgl. Network: {doc['network']}. Dissection: top 0.005 quantile, "
             f"IoU ≥ 0.04, {s['dissect_images']} held-out images. Values: mean ± std over seeds; paper in "
             f"brackets.", "",
             "| regularizer | layer | colour | shape | colour-shape | total (of 15) | test acc. % |",
             "|---|---|---|---|---|---|---|"]
    for regime in regimes:
        for layer in ("conv1", "conv2"):
            ours = doc["summary"][regime][layer]
            paper = PAPER[regime][layer]
            cells = [f"{ours[c]} [{paper[i]}]" for i, c in enumerate(CATEGORIES)]
            acc = doc["summary"][regime]["test_accuracy"] if layer == "conv1" else ""
            lines.append(f"| {regime} | {layer} | " + " | ".join(cells)
                         + f" | {ours['total']} [{paper[3]}] | {acc} |")
    base = doc["runs"][0]["base_rate"]
    lines += ["", f"Base rate (majority class) on the test images: {100 * base:.1f} %.", "",
              "Paired differences of unique detectors (same seeds):", ""]
    lines += [f"- {name}: {describe(v, 1)}" for name, v in doc["paired"].items()]
    full = doc["summary"].get("r_bn+l_g+l_s", {})
    if "last_epoch" in full:
        first, last = full["first_epoch"], full["last_epoch"]
        lines += ["", f"CGL log of regime (c), mean ± std over seeds: P1 {last['P1']}, P2 {last['P2']} after the "
                      f"last epoch (initial 1, 0); L_g {last['L_g']}; L_s {first['L_s']} (first epoch) → "
                      f"{last['L_s']} (last) against {doc['uniform_L_s']} for a spatially uniform ψ; spread of "
                      f"ψ (std) {first['psi_std']} → {last['psi_std']}."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
