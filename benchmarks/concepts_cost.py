"""Concept discovery cost relative to the probe pass on the same images, and its memory against the image count.

The shipped EfficientNet-Lite0 (224×224), its last stage (``bn2``: 1280 channels on a 7×7 grid, the
map the head pools), ``photos`` crops. In each of ``--repeats`` alternated rounds
(:func:`benchmarks.harness.alternate`): the probe pass (``run_probe`` of the same layer into a fresh
folder), ``discover_concepts`` with NMF at k = 16 (three seeds, two fitting epochs: the defaults) and
with one seed. Reported: medians of wall and process CPU time, and the per-round ratio to the probe
pass. torch and numpy's BLAS both run ``--threads`` threads. The machine is shared with other jobs,
so the CPU-time ratio is the steadier figure; the harness records the CPU model and the load before
and after. One untimed call of each comes first (scikit-learn's import, seconds on a loaded machine,
is a cost of the process, not of a discovery).

Memory: one discovery on n and on 2n images with the replay cache off (every pass streams through
the model), each in a fresh process; the peak resident set above the level before the call.

Run: python -m benchmarks concepts_cost [--images 64] [--repeats 3]
(writes benchmarks/results/concepts_cost.{json,md}).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from benchmarks import harness
from inspectnet.analysis.concepts.discover import discover_concepts
from inspectnet.data import load_data
from inspectnet.models.zoo import load_model
from inspectnet.probe.recorder import run_probe

MODEL = "shipped:efficientnet_lite0"


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def peak_extra_mib(fn) -> float:
    """Peak resident memory above the level before ``fn()``, sampled every 2 ms in a thread."""
    base, peak, done = rss_bytes(), [rss_bytes()], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    fn()
    done.set()
    t.join()
    return round((max(peak[0], rss_bytes()) - base) / 2**20, 1)


def probe_pass(zm, n: int, batch_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_probe(zm, load_data(f"photos?n={n}", zm.transform()), "last_stage", Path(tmp) / "record",
                  batch_size=batch_size, device="cpu", show_progress=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Concept discovery cost vs the probe pass (Lite0 last stage, NMF k = 16).")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="alternated rounds of (probe, 3 seeds, 1 seed)")
    p.add_argument("--out", default=str(harness.RESULTS / "concepts_cost"), help="results path without suffix")
    p.add_argument("--memory-of", type=int, metavar="IMAGES", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # numpy's BLAS (the NMF) gets the same threads as torch: idle BLAS threads would spin on the CPU-time clock
    threadpool_limits(args.threads)
    zm = load_model(MODEL)
    if args.memory_of:  # child process of the memory check
        data = load_data(f"photos?n={args.memory_of}")
        mib = peak_extra_mib(lambda: discover_concepts(zm, data, "last_stage", "nmf", 16, seeds=1, epochs=1,
                                                       batch_size=args.batch_size, cache_bytes=0))
        print(json.dumps({"peak_extra_mib": mib}))
        return 0
    run = harness.start()
    n, bs = args.images, args.batch_size
    data = load_data(f"photos?n={n}")
    runs = {"probe": lambda: probe_pass(zm, n, bs),
            "nmf_k16_3_seeds": lambda: discover_concepts(zm, data, "last_stage", "nmf", 16, batch_size=bs),
            "nmf_k16_1_seed": lambda: discover_concepts(zm, data, "last_stage", "nmf", 16, seeds=1, batch_size=bs)}
    times = harness.alternate(runs, args.repeats, warmup=1, cpu=True)

    def per_round(k: str, clock: str) -> float:  # sample i of every run comes from round i
        pick = (lambda t: t["cpu"]) if clock == "cpu" else (lambda t: t)
        pairs = zip(pick(times[k])["samples_s"], pick(times["probe"])["samples_s"])
        return round(float(np.median([a / b for a, b in pairs])), 2)

    ratio = {k: {"wall": per_round(k, "wall"), "cpu": per_round(k, "cpu")} for k in runs if k != "probe"}
    memory = [{"images": c, "peak_extra_mib": _child_peak(c, bs)} for c in (n, 2 * n)]
    doc = {"command": run["command"], "model": MODEL, "layer": "bn2 (last_stage)", "images": n, "batch_size": bs,
           "threads": args.threads, "repeats": args.repeats,
           "median_wall_s": {k: round(t["median_s"], 3) for k, t in times.items()},
           "median_cpu_s": {k: round(t["cpu"]["median_s"], 3) for k, t in times.items()},
           "ratio_to_probe": ratio, "memory_streaming": memory}
    lines = ["# Concept discovery cost vs the probe pass", "",
             f"`{doc['command']}` — {MODEL}, last stage (bn2, 1280 × 7 × 7), {n} `photos` crops at 224×224, batch "
             f"{bs}, {args.threads} CPU thread(s) for torch and BLAS, {args.repeats} alternated rounds; medians, ratios "
             f"to the same round's probe pass (shared, loaded machine: process CPU time is the steadier measure).", "",
             "| run | wall s | CPU s | wall / probe | CPU / probe |", "|---|---|---|---|---|",
             f"| probe pass (`run_probe`, one layer) | {doc['median_wall_s']['probe']:.2f} | "
             f"{doc['median_cpu_s']['probe']:.2f} | 1 | 1 |",
             *[f"| discovery, {name} | {doc['median_wall_s'][k]:.2f} | {doc['median_cpu_s'][k]:.2f} | "
               f"**{ratio[k]['wall']:.2f}×** | **{ratio[k]['cpu']:.2f}×** |"
               for k, name in (("nmf_k16_3_seeds", "NMF k = 16, 3 seeds (default)"),
                               ("nmf_k16_1_seed", "NMF k = 16, 1 seed"))], "",
             "Peak extra memory, every pass streaming through the model (fresh process each): "
             + ", ".join(f"{m['images']} images {m['peak_extra_mib']} MiB" for m in memory) + ".", ""]
    out = Path(args.out)
    harness.write_results(out.name, doc, "\n".join(lines), run, out=out.parent)
    print("\n".join(lines))
    return 0


def _child_peak(images: int, batch_size: int) -> float:
    """Peak extra RSS of one streaming discovery in a fresh process (no memory left over from earlier runs)."""
    cmd = harness.self_command("concepts_cost", "--batch-size", str(batch_size), "--memory-of", str(images))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=harness.ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_extra_mib"]


if __name__ == "__main__":
    sys.exit(main())
