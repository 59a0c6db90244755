"""CGL step time against a vanilla step: ResNet18 (1×28×28, 10 classes), every Conv2d regularised
(20 layers, the BN variant where a BatchNorm follows), batch 64, forward + loss + backward + SGD
step, the two steps alternated in one run on the same batch (ABBA: the order flips every round, so
neither step always runs after the other). Each step is timed by this process's CPU time (one
thread), which other jobs on a shared machine disturb far less than wall-clock time. The figure is
the median over the rounds of each round's CGL/vanilla ratio, with its interquartile range (a
round's two steps run seconds apart and see the same load); the ratio of the two medians and the
wall-clock ratio are reported too.

``--net table1`` times the network of ``cgl_table1.py`` instead (conv1 3→64 stride 2 with 32×32
maps, conv2 64→128 on 16×16, batch 32 of 3×64×64, regime (c)'s plugin: groups 16, λ_s 1): there
the convolutions are cheap and ψ and L_g on the large early maps dominate.

    python benchmarks/cgl_step.py [--rounds 30] [--threads 1] [--net resnet18|table1] [--profile]

``--profile`` prints torch.profiler's table of the CGL step's most expensive operators (CPU
self time), which is where the speed-up work started. Writes benchmarks/results/cgl_step.{json,md}
(``cgl_step_table1.*`` for ``--net table1``).
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from inspectnet import load_model
from inspectnet.plugins import make_plugin
from inspectnet.training.finetune import PluginHooks

RESULTS = Path(__file__).parent / "results"
NETS = {  # name: (what it is, batch shape, classes, CGL plugin)
    "resnet18": ("timm resnet18, 1x28x28, 10 classes, train mode", (64, 1, 28, 28), 10, "cgl:layers=all,groups=8"),
    "table1": ("cgl_table1's two-conv network (64, 128 filters), 3x64x64, 2 classes", (32, 3, 64, 64), 2,
               "cgl:layers=conv1|conv2,groups=16,lam_bn=2e-3,lam_g=0.01,lam_s=1"),
}


def build(net: str) -> torch.nn.Module:
    if net == "table1":
        from cgl_table1 import TwoLayerCNN

        return TwoLayerCNN(widths=(64, 128))
    return load_model("resnet18", num_classes=10, in_chans=1, input_size=28).model


def setup(net: str, spec: str | None):
    torch.manual_seed(0)
    model = build(net)
    plugins = [make_plugin(spec).attach(model, num_classes=NETS[net][2])] if spec else []
    hooks = PluginHooks(plugins)
    opt = torch.optim.SGD(hooks.parameter_groups(model, 1e-4), lr=1e-3, momentum=0.9)
    return model.train(), hooks, opt


def step(model, hooks, opt, x, y) -> None:
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y) + sum(hooks.loss(x, y, logits).values(), torch.zeros(()))
    opt.zero_grad()
    loss.backward()
    opt.step()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--net", default="resnet18", choices=sorted(NETS))
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    what, shape, classes, spec = NETS[args.net]
    x, y = torch.rand(*shape, generator=g), torch.randint(0, classes, shape[:1], generator=g)
    runs = {"vanilla": setup(args.net, None), "cgl": setup(args.net, spec)}
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        step(*runs["cgl"], x, y)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step(*runs["cgl"], x, y)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    load_start = os.getloadavg()[0]  # the machine is shared: its load goes beside the figures
    times: dict[str, list[float]] = {name: [] for name in runs}
    walls: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds + 3):
        for name in (("vanilla", "cgl") if r % 2 == 0 else ("cgl", "vanilla")):
            t0, w0 = time.process_time(), time.perf_counter()
            step(*runs[name], x, y)
            if r >= 3:  # warm-up rounds
                times[name].append(time.process_time() - t0)
                walls[name].append(time.perf_counter() - w0)
    med = {name: statistics.median(v) for name, v in times.items()}
    wall = {name: statistics.median(v) for name, v in walls.items()}
    per_round = [c / v for c, v in zip(times["cgl"], times["vanilla"])]
    ratio = statistics.median(per_round)
    q1, _, q3 = statistics.quantiles(per_round, n=4)
    flag = "" if args.net == "resnet18" else f" --net {args.net}"
    doc = {"command": f"python benchmarks/cgl_step.py --rounds {args.rounds} --threads {args.threads}{flag}",
           "plugin": spec, "model": what, "batch": shape[0],
           "threads": args.threads, "rounds": args.rounds, "median_step_cpu_s": med, "ratio": ratio,
           "ratio_iqr": [q1, q3], "ratio_of_medians": med["cgl"] / med["vanilla"],
           "median_step_wall_s": wall, "ratio_wall": wall["cgl"] / wall["vanilla"],
           "load_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)], "torch": torch.__version__}
    out = RESULTS / ("cgl_step" if args.net == "resnet18" else f"cgl_step_{args.net}")
    RESULTS.mkdir(exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    target = " (target ≤ 1.6×)" if args.net == "resnet18" else ""
    text = (f"CGL step / vanilla step, {what}, regularised by `{spec}`, batch {shape[0]}, "
            f"CPU {args.threads} thread(s), {args.rounds} alternated rounds (ABBA) on a shared machine, process CPU "
            f"time per step: median of the rounds' ratios **{ratio:.2f}×**{target}, interquartile range "
            f"{q1:.2f}–{q3:.2f}×; medians vanilla {med['vanilla'] * 1000:.1f} ms, CGL {med['cgl'] * 1000:.1f} ms "
            f"({doc['ratio_of_medians']:.2f}×); wall clock {doc['ratio_wall']:.2f}× "
            f"({wall['vanilla'] * 1000:.0f} / {wall['cgl'] * 1000:.0f} ms); load (1-minute average) "
            f"{doc['load_1min'][0]} at the start, {doc['load_1min'][1]} at the end.\n\n`{doc['command']}`\n")
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
