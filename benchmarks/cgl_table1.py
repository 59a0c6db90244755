"""Concept Group Learning, paper Table 1: unique concept detectors of a 2-layer CNN on synthetic shapes.

The paper (Varshneya et al., §4.1, Table 1) trains a CNN with two 3×3 conv layers (128 and 256
filters) on the binary task "a square is present" with (a) weight decay, (b) the block-norm
regularizer R_bn instead, (c) R_bn + group activation loss L_g + spatial loss L_s, and counts the
unique Network Dissection detectors per concept category at conv1 and conv2 (15 concepts: 3
colours, 3 shapes, 9 colour-shapes). Paper, conv2: 10 / 12 / 14 of 15.

This script trains the three regimes with the same seeds, data and epochs, dissects conv1 and
conv2 with :func:`inspectnet.analysis.dissect.dissection.dissect` on held-out shapes images, and writes mean ± std over
seeds beside the paper's numbers. To stay within a few CPU minutes conv1 has stride 2 and is
followed by a 2× max-pool (conv1 maps are 32×32, conv2 maps 16×16, both upsampled to the 64×64 masks
for dissection), the head is a global max-pool (presence task) and the run is short;
the paper gives no training details for this experiment (epochs, λ's, groups), so ours are stated
in the output.

CGL terms (DESIGN §5.3) come from the ``cgl`` fine-tuning plugin (``inspectnet_plugins.cgl``, its
R_bn, ψ, L_g and L_s; regime (b) sets its λ_g = λ_s = 0). ``--terms local`` uses instead the small
stand-alone functions below (``psi``, ``group_loss``, ``spatial_loss``, ``block_norm``; L_s there in
[0, 1] map coordinates rather than pixels), written while the plugin did not exist yet.

    python benchmarks/cgl_table1.py            # -> benchmarks/results/cgl_table1.{json,md}
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inspectnet.analysis.dissect.dissection import dissect
from inspectnet.core.results import library_versions
from inspectnet.data import shapes as shapes_mod
from inspectnet.data.concepts import ArrayConcepts

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {  # Table 1: (colour, shape, colour-shape, total)
    "weight_decay": {"conv1": (3, 0, 4, 7), "conv2": (3, 0, 7, 10)},
    "r_bn": {"conv1": (3, 2, 4, 9), "conv2": (3, 2, 7, 12)},
    "r_bn+l_g+l_s": {"conv1": (3, 3, 5, 11), "conv2": (3, 2, 9, 14)},
}
CATEGORIES = ("colour", "shape", "colour-shape")
PLAIN = {"input_size": (3, 64, 64), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


class TwoLayerCNN(nn.Module):
    """conv1 (3→128, 3×3, stride) → ReLU → max-pool → conv2 (128→256, 3×3) → ReLU → global max (or mean) → linear."""

    def __init__(self, num_classes: int = 2, pool: int = 2, stride: int = 2, head: str = "max"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 128, 3, stride=stride, padding=1)
        self.pool = nn.MaxPool2d(pool) if pool > 1 else nn.Identity()
        self.conv2 = nn.Conv2d(128, 256, 3, padding=1)
        self.fc = nn.Linear(256, num_classes)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.relu(self.conv2(self.pool(F.relu(self.conv1(x)))))
        # "is a square present" is an existence question: global max pooling answers it directly
        return self.fc(f.amax(dim=(2, 3)) if self.head == "max" else f.mean(dim=(2, 3)))


# ---------------------------------------------------------------- CGL terms (DESIGN §5.3)
def groups_of(channels: int, groups: int) -> list[range]:
    """Consecutive filter groups; leftover filters (channels % groups) are 'free' and in no group."""
    size = channels // groups
    return [range(g * size, (g + 1) * size) for g in range(groups)]


def psi(pre: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Soft receptive field σ(P1·a/S + P2), S = std of each filter's map over the minibatch (no BN here)."""
    s = pre.transpose(0, 1).flatten(1).std(dim=1).clamp(min=1e-6)
    return torch.sigmoid(p1 * pre / s[None, :, None, None] + p2)


def soft_iou_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """D(ψ_i, ψ_j) = 2‖ψ_i − ψ_j‖₁ / (‖ψ_i‖₁ + ‖ψ_j‖₁ + ‖ψ_i − ψ_j‖₁), norms over batch and space (dim 1)."""
    d = (a - b).abs().sum(dim=1)
    return 2 * d / (a.sum(dim=1) + b.sum(dim=1) + d).clamp(min=1e-12)


def group_loss(ps: torch.Tensor, groups: list[range], gen: torch.Generator) -> torch.Tensor:
    """L_g: mean over groups of the mean D over r = 3·N_g random distinct pairs in the group."""
    flat = ps.transpose(0, 1).flatten(1)  # (C, B·H·W)
    terms = []
    for g in groups:
        n = len(g)
        i = torch.randint(0, n, (3 * n,), generator=gen)
        j = (i + torch.randint(1, n, (3 * n,), generator=gen)) % n  # j ≠ i
        terms.append(soft_iou_distance(flat[g.start + i], flat[g.start + j]).mean())
    return torch.stack(terms).mean()


def spatial_loss(ps: torch.Tensor) -> torch.Tensor:
    """L_s: ψ-weighted mean distance of each map from its ψ centre of mass (coordinates in [0, 1])."""
    _, _, h, w = ps.shape
    yy = torch.linspace(0, 1, h, device=ps.device)[:, None].expand(h, w)
    xx = torch.linspace(0, 1, w, device=ps.device)[None, :].expand(h, w)
    mass = ps.sum(dim=(2, 3)).clamp(min=1e-12)
    cy = (ps * yy).sum(dim=(2, 3)) / mass
    cx = (ps * xx).sum(dim=(2, 3)) / mass
    dist = ((yy - cy[..., None, None]) ** 2 + (xx - cx[..., None, None]) ** 2 + 1e-12).sqrt()
    return ((ps * dist).sum(dim=(2, 3)) / mass).mean()


def block_norm(weight: torch.Tensor, groups: list[range]) -> torch.Tensor:
    """R_bn of one layer: Σ_g ‖W_g‖_F over its filter groups."""
    return torch.stack([weight[g.start:g.stop].norm() for g in groups]).sum()


# ---------------------------------------------------------------- training
def train_one(regime: str, seed: int, x: torch.Tensor, y: torch.Tensor, args) -> tuple[TwoLayerCNN, dict]:
    torch.manual_seed(seed)
    model = TwoLayerCNN(pool=args.pool, stride=args.stride)
    p1, p2 = nn.Parameter(torch.tensor(1.0)), nn.Parameter(torch.tensor(0.0))
    convs = {"conv1": model.conv1, "conv2": model.conv2}
    groups = {k: groups_of(m.out_channels, args.groups) for k, m in convs.items()}
    conv_w = [model.conv1.weight, model.conv2.weight]
    others = [p for p in model.parameters() if all(p is not w for w in conv_w)]
    wd_conv = args.weight_decay if regime == "weight_decay" else 0.0
    plugin = None
    if args.terms == "plugin" and regime != "weight_decay":
        from inspectnet_plugins.cgl import ConceptGroupLearning

        full = regime == "r_bn+l_g+l_s"
        plugin = ConceptGroupLearning(layers="conv1|conv2", groups=args.groups, lam_bn=args.lam_bn,
                                      lam_g=args.lam_g if full else 0.0, lam_s=args.lam_s if full else 0.0,
                                      seed=seed).attach(model, num_classes=2)
        p1, p2 = plugin.P, None  # the plugin's own learned (P1, P2)
    groups_ = [{"params": conv_w, "weight_decay": wd_conv},
               {"params": others, "weight_decay": args.weight_decay},
               {"params": [p1] if plugin else [p1, p2], "weight_decay": 0.0}]
    opt = torch.optim.Adam(groups_, lr=args.lr) if args.optimizer == "adam" else \
        torch.optim.SGD(groups_, lr=args.lr, momentum=0.9)
    pre: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: pre.__setitem__(k, o)) for k, m in convs.items()]
    gen = torch.Generator().manual_seed(seed)
    n, steps = len(x), 0
    total = args.epochs * ((n + args.batch_size - 1) // args.batch_size)
    sums = {"ce": 0.0, "r_bn": 0.0, "l_g": 0.0, "l_s": 0.0}
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for s in range(0, n, args.batch_size):
            idx = order[s:s + args.batch_size]
            for g in opt.param_groups:
                g["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * steps / total))
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            sums["ce"] += float(loss.detach())
            if plugin is not None:
                terms = plugin.loss(x[idx], y[idx], logits)
                loss = loss + sum(terms.values())
                sums["r_bn"] += float(terms["cgl_bn"].detach()) / args.lam_bn
                if regime == "r_bn+l_g+l_s":
                    sums["l_g"] += float(terms["cgl_g"].detach()) / args.lam_g
                    sums["l_s"] += float(terms["cgl_s"].detach()) / args.lam_s
            elif regime != "weight_decay":
                r = sum(block_norm(convs[k].weight, groups[k]) for k in convs)
                loss = loss + args.lam_bn * r
                sums["r_bn"] += float(r.detach())
            if plugin is None and regime == "r_bn+l_g+l_s":
                ps = {k: psi(pre[k], p1, p2) for k in convs}
                lg = torch.stack([group_loss(ps[k], groups[k], gen) for k in convs]).mean()
                ls = torch.stack([spatial_loss(ps[k]) for k in convs]).mean()
                loss = loss + args.lam_g * lg + args.lam_s * ls
                sums["l_g"] += float(lg.detach())
                sums["l_s"] += float(ls.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    for h in hooks:
        h.remove()
    if plugin is not None:
        plugin.detach()
    model.eval()
    return model, {k: v / steps for k, v in sums.items()}


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        pred = torch.cat([model(x[s:s + 256]).argmax(1) for s in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def shapes_tensors(n: int, seed: int):
    images, masks, pairs = shapes_mod.generate(n, seed)
    labels, _ = shapes_mod.labels_for(pairs, "square")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return images, masks, x, torch.from_numpy(labels)


def fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--dissect-images", type=int, default=300)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    p.add_argument("--pool", type=int, default=2, help="max-pool size between conv1 and conv2")
    p.add_argument("--stride", type=int, default=2, help="conv1 stride")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lam-bn", type=float, default=2e-3)
    p.add_argument("--lam-g", type=float, default=0.2)
    p.add_argument("--lam-s", type=float, default=0.01, help="λ_s (L_s in pixels with the plugin)")
    p.add_argument("--terms", default="plugin", choices=["plugin", "local"],
                   help="CGL terms from the cgl plugin or from the local functions")
    p.add_argument("--groups", type=int, default=16, help="concept groups per conv layer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--regimes", default="weight_decay,r_bn,r_bn+l_g+l_s")
    p.add_argument("--out", default=str(RESULTS / "cgl_table1"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
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
            model, losses = train_one(regime, seed, x_tr, y_tr, args)
            t_train = time.perf_counter() - t0
            d = dissect(model, concepts, "conv1,conv2", data_config=PLAIN, batch_size=50, device="cpu")
            run = {"regime": regime, "seed": seed, "test_accuracy": round(accuracy(model, x_te, y_te), 4),
                   "train_s": round(t_train, 1), "losses": {k: round(v, 4) for k, v in losses.items()}}
            for layer, info in d.layers.items():
                run[layer] = {"unique_by_category": info["unique_by_category"],
                              "unique_detectors": info["unique_detectors"], "detectors": info["detectors"],
                              "concepts": sorted(info["detector_concepts"])}
            runs.append(run)
            print(json.dumps(run), flush=True)
            done = sorted({r["seed"] for r in runs if all(any(x["seed"] == r["seed"] and x["regime"] == g
                                                             for x in runs) for g in regimes)})
            if done:
                write([r for r in runs if r["seed"] in done], regimes, done, args, argv)
    return 0


def write(runs: list[dict], regimes: list[str], seeds: list[int], args, argv) -> None:
    """Write the JSON and Markdown results of the runs finished so far (rewritten after every run)."""
    summary = summarise(runs, regimes)
    doc = {"command": "python benchmarks/cgl_table1.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "settings": {k: v for k, v in vars(args).items() if k != "out"},
           "network": (f"conv1 3→128 3×3 stride {args.stride}, ReLU, maxpool {args.pool}, conv2 128→256 3×3, ReLU, "
                       "global max, linear 256→2"),
           "cgl_terms": ("inspectnet_plugins.cgl (plugin)" if args.terms == "plugin" else
                         "benchmarks/cgl_table1.py functions (psi, group_loss, spatial_loss, block_norm)"),
           "paper": PAPER, "summary": summary, "runs": runs, "versions": library_versions()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(doc, regimes, seeds))


def summarise(runs: list[dict], regimes: list[str]) -> dict:
    out = {}
    for regime in regimes:
        rs = [r for r in runs if r["regime"] == regime]
        out[regime] = {"test_accuracy": fmt([100 * r["test_accuracy"] for r in rs])}
        for layer in ("conv1", "conv2"):
            cols = [[r[layer]["unique_by_category"][c] for r in rs] for c in CATEGORIES]
            out[regime][layer] = {c: fmt(v) for c, v in zip(CATEGORIES, cols)}
            out[regime][layer]["total"] = fmt([r[layer]["unique_detectors"] for r in rs])
    return out


def markdown(doc: dict, regimes: list[str], seeds: list[int]) -> str:
    s = doc["settings"]
    lines = ["# CGL Table 1 on synthetic shapes (binary task 'square present')", "",
             f"`{doc['command']}`", "",
             f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {s['train_images']} training images, "
             f"{s['epochs']} epochs, {s['optimizer']} lr {s['lr']} cosine, batch {s['batch_size']}, "
             f"conv1 stride {s['stride']}, max-pool {s['pool']} after conv1; weight decay "
             f"{s['weight_decay']} (regime a: all weights; b, c: linear layer only), λ_bn {s['lam_bn']}, "
             f"λ_g {s['lam_g']}, λ_s {s['lam_s']}, {s['groups']} groups per conv layer, CGL terms from "
             f"{doc['cgl_terms']}. "
             f"Network: {doc['network']}. Dissection: top 0.005 quantile, IoU ≥ 0.04, "
             f"{s['dissect_images']} held-out images. Values: mean ± std over seeds; paper in brackets.", "",
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
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
