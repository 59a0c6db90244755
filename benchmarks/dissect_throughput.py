"""Dissection cost vs a plain forward pass, and dissection memory vs number of images, in one run.

All timings feed the same images (same preprocessing, same batch size, same thread count) to the
same model: a plain forward, the one-pass dissection (default) and the two-pass one (exact overlaps),
run back to back in each of ``--repeats`` rounds (:func:`benchmarks.harness.alternate`: each round starts
at the next one); the ratio to the forward of the same round is
reported (median over rounds), as wall time and as process CPU time (the machine is shared, so CPU
time is the steadier of the two). The one-pass IoU is compared with the two-pass IoU (same
thresholds). Memory: each (method, image count) runs in a fresh process, whose resident set is
sampled every 2 ms during ``dissect``; the peak above the level just before the call is reported
(the model and concept data are loaded before that level is taken).

Run: python -m benchmarks dissect_throughput [--images 512] [--repeats 3] [--memory-images 128,512,2048]
(writes benchmarks/results/dissect_throughput.{json,md}).
"""

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from inspectnet.analysis.dissect.dissection import _Items, dissect, dissection_transform
from inspectnet.data.concepts import load_concepts
from inspectnet.models.layers import eval_mode
from inspectnet.models.zoo import load_model


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


class PeakRSS:
    """Samples the resident set size in a thread; ``peak - base`` is the extra memory of the block."""

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())


def plain_forward(zm, data, n, batch_size) -> None:
    items = _Items(data, dissection_transform(zm.data_config), tuple(data.masks(0).shape[1:]), n)
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size)
    with eval_mode(zm.model), torch.inference_mode():
        for x, _m, _i in loader:
            zm.model(x)


def agreement(one, two) -> dict:
    """How the one-pass result compares with the two-pass one (each threshold within a bin; exact overlaps)."""
    diff = np.concatenate([np.abs(one.iou[k] - two.iou[k]).ravel() for k in one.iou])
    same = [u1["detector"] == u2["detector"] and (not u1["detector"] or u1["concept"] == u2["concept"])
            for k in one.layers for u1, u2 in zip(one.layers[k]["units"], two.layers[k]["units"])]
    return {"max_abs_iou_diff": round(float(diff.max()), 4), "mean_abs_iou_diff": round(float(diff.mean()), 6),
            "units_same_detector_and_concept": f"{sum(same)}/{len(same)}",
            "unique_detectors": {k: [one.layers[k]["unique_detectors"], two.layers[k]["unique_detectors"]]
                                 for k in one.layers}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--layers", default="layer1,layer2,layer3,layer4")
    p.add_argument("--images", type=int, default=512, help="images for the timing comparison")
    p.add_argument("--memory-images", default="128,512,2048", help="image counts for the memory check")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="rounds of (forward, one pass, two passes)")
    p.add_argument("--out", default=str(harness.RESULTS / "dissect_throughput"), help="results path without suffix")
    p.add_argument("--memory-of", nargs=2, type=int, metavar=("IMAGES", "PASSES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    zm = load_model(args.model, num_classes=2, input_size=64)
    counts = [int(c) for c in args.memory_images.split(",")]
    data = load_concepts(f"shapes?n={max(counts + [args.images])}&seed=0")
    if args.memory_of:  # child process of the memory check
        with PeakRSS() as m:
            dissect(zm, data, args.layers, limit=args.memory_of[0], batch_size=args.batch_size,
                    passes=args.memory_of[1])
        print(json.dumps({"peak_extra_mib": round((m.peak - m.base) / 2**20, 1)}))
        return 0
    run = harness.start()
    n, bs = args.images, args.batch_size
    dissect(zm, data, args.layers, limit=bs, batch_size=bs)  # warm-up
    results = {}  # the latest dissection of each kind, for the one-pass vs two-pass comparison
    runs = {"forward": lambda: plain_forward(zm, data, n, bs),
            "one_pass": lambda: results.update(one_pass=dissect(zm, data, args.layers, limit=n, batch_size=bs)),
            "two_pass": lambda: results.update(two_pass=dissect(zm, data, args.layers, limit=n, batch_size=bs,
                                                                passes=2))}
    times = harness.alternate(runs, args.repeats, warmup=0, cpu=True)
    wall = {k: t["median_s"] for k, t in times.items()}
    cpu = {k: t["cpu"]["median_s"] for k, t in times.items()}

    def per_round(k: str, clock: dict) -> float:  # sample i of every run comes from round i
        return round(float(np.median([a / f for a, f in zip(clock[k]["samples_s"], clock["forward"]["samples_s"])])), 2)

    cpu_times = {k: t["cpu"] for k, t in times.items()}
    ratio = {f"{k}_over_forward": {"wall": per_round(k, times), "cpu": per_round(k, cpu_times)}
             for k in ("one_pass", "two_pass")}
    units = sum(v["num_units"] for v in results["one_pass"].layers.values())
    memory = [{"images": c, **{f"peak_extra_mib_{passes}_pass": _child_peak(argv, c, passes) for passes in (1, 2)}}
              for c in counts]
    doc = {
        "command": run["command"], "model": zm.spec, "input": "shapes 64×64", "layers": args.layers, "units": units,
        "images": n, "batch_size": bs, "threads": args.threads, "device": "cpu", "repeats": args.repeats,
        "median_wall_s": {k: round(v, 3) for k, v in wall.items()}, "median_cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        **ratio, "one_pass_vs_two_pass": agreement(results["one_pass"], results["two_pass"]),
        "iqr_wall_s": {k: round(t["iqr_s"], 3) for k, t in times.items()},
        "iqr_cpu_s": {k: round(t["cpu"]["iqr_s"], 3) for k, t in times.items()}, "memory": memory,
    }
    agree = doc["one_pass_vs_two_pass"]
    lines = [
        "# Dissection throughput and memory", "",
        f"`{doc['command']}` — {zm.spec}, layers {args.layers} ({units} units), {n} shapes images 64×64, "
        f"batch {bs}, {args.threads} CPU thread(s); forward, one-pass and two-pass dissection back to back in "
        f"each of {args.repeats} alternated rounds of one run; medians, ratios to the same round's forward (shared, loaded "
        f"machine: process CPU time is the steadier measure, wall time includes waiting for a core).", "",
        "| run | wall s | CPU s | wall / forward | CPU / forward |", "|---|---|---|---|---|",
        f"| plain forward | {wall['forward']:.2f} | {cpu['forward']:.2f} | 1 | 1 |",
        *[f"| dissection, {name} | {wall[k]:.2f} | {cpu[k]:.2f} | **{ratio[k + '_over_forward']['wall']:.2f}×** | "
          f"**{ratio[k + '_over_forward']['cpu']:.2f}×** |"
          for k, name in (("one_pass", "one pass (default)"), ("two_pass", "two passes (exact overlaps)"))], "",
        f"One pass vs two passes (thresholds each within a bin): max |ΔIoU| {agree['max_abs_iou_diff']}, mean "
        f"{agree['mean_abs_iou_diff']}; units with the same detector status and detected concept: "
        f"{agree['units_same_detector_and_concept']}; unique detectors per layer (one, two): "
        f"{agree['unique_detectors']}.", "",
        "Peak extra memory (fresh process each; the one pass holds the latest batches' maps, at most 64 MiB, "
        "until later batches have raised the floors):", "",
        "| images | peak extra RSS, one pass (MiB) | two passes (MiB) |", "|---|---|---|",
        *[f"| {m['images']} | {m['peak_extra_mib_1_pass']} | {m['peak_extra_mib_2_pass']} |" for m in memory], "",
    ]
    out = Path(args.out)
    harness.write_results(out.name, doc, "\n".join(lines), run, out=out.parent)
    print("\n".join(lines))
    return 0


def _child_peak(argv, images: int, passes: int) -> float:
    """Peak extra RSS of one dissection in a fresh process (no memory left over from earlier runs)."""
    args = sys.argv[1:] if argv is None else argv
    cmd = harness.self_command("dissect_throughput", *args, "--memory-of", str(images), str(passes))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=harness.ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_extra_mib"]


if __name__ == "__main__":
    raise SystemExit(main())
