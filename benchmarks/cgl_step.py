"""CGL step time against a vanilla step: ResNet18 (1×28×28, 10 classes), every Conv2d regularised
(20 layers, the BN variant where a BatchNorm follows), batch 64, forward + loss + backward + SGD
step, the two steps alternated in one run on the same batch (:func:`benchmarks.harness.alternate`:
the order flips every round, so neither step always runs after the other). Each step is timed by this process's CPU time (one
thread), which other jobs on a shared machine disturb far less than wall-clock time. The figure is
the median over the rounds of each round's CGL/vanilla ratio, with its interquartile range (a
round's two steps run seconds apart and see the same load); the ratio of the two medians and the
wall-clock ratio are reported too.

``--net table1`` times the network of ``cgl_table1`` instead (conv1 3→64 stride 2 with 32×32
maps, conv2 64→128 on 16×16, batch 32 of 3×64×64, regime (c)'s plugin: groups 16, λ_s 1): there
the convolutions are cheap and ψ and L_g on the large early maps dominate.

Run: python -m benchmarks cgl_step [--rounds 30] [--threads 1] [--net resnet18|table1] [--profile]

``--profile`` prints torch.profiler's table of the CGL step's most expensive operators (CPU
self time), which is where the speed-up work started. Writes benchmarks/results/cgl_step.{json,md}
(``cgl_step_table1.*`` for ``--net table1``).
"""

import argparse
import statistics

import torch

from benchmarks import harness
from inspectnet import load_model
from inspectnet.plugins import make_plugin
from inspectnet.training.finetune import PluginHooks

WARMUP = 3  # untimed steps of each before the first round
NETS = {  # name: (what it is, batch shape, classes, CGL plugin)
    "resnet18": ("timm resnet18, 1x28x28, 10 classes, train mode", (64, 1, 28, 28), 10, "cgl:layers=all,groups=8"),
    "table1": ("cgl_table1's two-conv network (64, 128 filters), 3x64x64, 2 classes", (32, 3, 64, 64), 2,
               "cgl:layers=conv1|conv2,groups=16,lam_bn=2e-3,lam_g=0.01,lam_s=1"),
}


def build(net: str) -> torch.nn.Module:
    if net == "table1":
        from benchmarks.cgl_table1 import TwoLayerCNN

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--net", default="resnet18", choices=sorted(NETS))
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    run = harness.start()
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
    timed = harness.alternate({name: (lambda r=r: step(*r, x, y)) for name, r in runs.items()}, args.rounds,
                              warmup=WARMUP, cpu=True)
    med = {name: t["cpu"]["median_s"] for name, t in timed.items()}
    wall = {name: t["median_s"] for name, t in timed.items()}
    # sample i of both steps comes from round i: the two ran seconds apart, under the same load
    per_round = [c / v for c, v in zip(timed["cgl"]["cpu"]["samples_s"], timed["vanilla"]["cpu"]["samples_s"])]
    ratio = statistics.median(per_round)
    q1, _, q3 = statistics.quantiles(per_round, n=4)
    doc = {"plugin": spec, "model": what, "batch": shape[0],
           "threads": args.threads, "rounds": args.rounds, "median_step_cpu_s": med, "ratio": ratio,
           "ratio_iqr": [q1, q3], "ratio_of_medians": med["cgl"] / med["vanilla"],
           "median_step_wall_s": wall, "ratio_wall": wall["cgl"] / wall["vanilla"],
           "step_cpu_s": {name: t["cpu"] for name, t in timed.items()},
           "step_wall_s": {name: {k: v for k, v in t.items() if k != "cpu"} for name, t in timed.items()}}
    target = " (target ≤ 1.6×)" if args.net == "resnet18" else ""
    text = (f"CGL step / vanilla step, {what}, regularised by `{spec}`, batch {shape[0]}, "
            f"CPU {args.threads} thread(s), {args.rounds} alternated rounds (ABBA), process CPU "
            f"time per step: median of the rounds' ratios **{ratio:.2f}×**{target}, interquartile range "
            f"{q1:.2f}–{q3:.2f}×; medians vanilla {med['vanilla'] * 1000:.1f} ms, CGL {med['cgl'] * 1000:.1f} ms "
            f"({doc['ratio_of_medians']:.2f}×); wall clock {doc['ratio_wall']:.2f}× "
            f"({wall['vanilla'] * 1000:.0f} / {wall['cgl'] * 1000:.0f} ms); machine and load average: "
            f"Environment below.\n")
    harness.write_results("cgl_step" if args.net == "resnet18" else f"cgl_step_{args.net}", doc, text, run)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
