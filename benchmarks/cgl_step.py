"""CGL step time against a vanilla step: ResNet18 (1×28×28, 10 classes), every Conv2d regularised
(20 layers, the BN variant where a BatchNorm follows), batch 64, forward + loss + backward + SGD
step, the two steps alternated in one run on the same batch; median of the rounds. Each step is
timed by this process's CPU time (one thread), which other jobs on a shared machine disturb far
less than wall-clock time; the wall-clock medians are reported too.

    python benchmarks/cgl_step.py [--rounds 30] [--threads 1] [--profile]

``--profile`` prints torch.profiler's table of the CGL step's most expensive operators (CPU
self time), which is where the speed-up work started. Writes benchmarks/results/cgl_step.{json,md}.
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
SPEC = "cgl:layers=all,groups=8"


def setup(spec: str | None):
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=28)
    plugins = [make_plugin(spec).attach(zm.model, num_classes=10)] if spec else []
    hooks = PluginHooks(plugins)
    opt = torch.optim.SGD(hooks.parameter_groups(zm.model, 1e-4), lr=1e-3, momentum=0.9)
    return zm.model.train(), hooks, opt


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
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    runs = {"vanilla": setup(None), "cgl": setup(SPEC)}
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
        for name, run in runs.items():
            t0, w0 = time.process_time(), time.perf_counter()
            step(*run, x, y)
            if r >= 3:  # warm-up rounds
                times[name].append(time.process_time() - t0)
                walls[name].append(time.perf_counter() - w0)
    med = {name: statistics.median(v) for name, v in times.items()}
    wall = {name: statistics.median(v) for name, v in walls.items()}
    ratio = med["cgl"] / med["vanilla"]
    doc = {"command": "python benchmarks/cgl_step.py " + f"--rounds {args.rounds} --threads {args.threads}",
           "plugin": SPEC, "model": "timm resnet18, 1x28x28, 10 classes, train mode", "batch": 64,
           "threads": args.threads, "rounds": args.rounds, "median_step_cpu_s": med, "ratio": ratio,
           "median_step_wall_s": wall, "ratio_wall": wall["cgl"] / wall["vanilla"],
           "load_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)], "torch": torch.__version__}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cgl_step.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = (f"CGL step / vanilla step, ResNet18 1×28×28, all 20 Conv2d regularised (`{SPEC}`), batch 64, "
            f"CPU {args.threads} thread(s), median of {args.rounds} alternated rounds on a shared machine, "
            f"process CPU time per step: vanilla {med['vanilla'] * 1000:.1f} ms, CGL {med['cgl'] * 1000:.1f} ms, "
            f"**ratio {ratio:.2f}×** (target ≤ 1.6×); wall clock {doc['ratio_wall']:.2f}× "
            f"({wall['vanilla'] * 1000:.0f} / {wall['cgl'] * 1000:.0f} ms); load (1-minute average) "
            f"{doc['load_1min'][0]} at the start, {doc['load_1min'][1]} at the end.\n\n`{doc['command']}`\n")
    (RESULTS / "cgl_step.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
