"""Dissection cost vs a plain forward pass, and dissection memory vs number of images, in one run.

Both timings feed the same images (same preprocessing, same batch size, same thread count) to the
same model; dissection makes two passes (thresholds, then IoU) plus the upsampling and set counts,
so ~2× a forward is its floor. Memory: the process's resident set is sampled every 2 ms during
``dissect`` and the peak above the level just before the call is reported for growing image counts
(the concept data itself is loaded before the baseline is taken).

    python benchmarks/dissect_throughput.py            # writes benchmarks/results/dissect_throughput.{json,md}
"""

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import torch

from inspectnet.analysis.dissect.dissection import _Items, dissect, dissection_transform
from inspectnet.core.results import library_versions
from inspectnet.data.concepts import load_concepts
from inspectnet.models.layers import eval_mode
from inspectnet.models.zoo import load_model

RESULTS = Path(__file__).resolve().parent / "results"


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


def plain_forward(zm, data, n, batch_size) -> float:
    items = _Items(data, dissection_transform(zm.data_config), tuple(data.masks(0).shape[1:]), n)
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size)
    t0 = time.perf_counter()
    with eval_mode(zm.model), torch.inference_mode():
        for x, _m, _i in loader:
            zm.model(x)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--layers", default="layer1,layer2,layer3,layer4")
    p.add_argument("--images", type=int, default=512, help="images for the timing comparison")
    p.add_argument("--memory-images", default="128,512,2048", help="image counts for the memory check")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "dissect_throughput"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    zm = load_model(args.model, num_classes=2, input_size=64)
    counts = [int(c) for c in args.memory_images.split(",")]
    data = load_concepts(f"shapes?n={max(counts + [args.images])}&seed=0")
    n = args.images
    dissect(zm, data, args.layers, limit=args.batch_size, batch_size=args.batch_size)  # warm-up
    fwd = plain_forward(zm, data, n, args.batch_size)
    t0 = time.perf_counter()
    result = dissect(zm, data, args.layers, limit=n, batch_size=args.batch_size)
    dis = time.perf_counter() - t0
    units = sum(v["num_units"] for v in result.layers.values())
    memory = []
    for c in counts:
        with PeakRSS() as m:
            dissect(zm, data, args.layers, limit=c, batch_size=args.batch_size)
        memory.append({"images": c, "peak_extra_mib": round((m.peak - m.base) / 2**20, 1)})
    doc = {
        "command": "python benchmarks/dissect_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": zm.spec, "input": "shapes 64×64", "layers": args.layers, "units": units,
        "images": n, "batch_size": args.batch_size, "threads": args.threads, "device": "cpu",
        "forward_s": round(fwd, 3), "dissect_s": round(dis, 3),
        "forward_images_per_s": round(n / fwd, 1), "dissect_images_per_s": round(n / dis, 1),
        "dissect_over_forward": round(dis / fwd, 2), "memory": memory, "versions": library_versions(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# Dissection throughput and memory", "",
        f"`{doc['command']}` — {zm.spec}, layers {args.layers} ({units} units), {n} shapes images 64×64, "
        f"batch {args.batch_size}, {args.threads} CPU thread(s).", "",
        "| pass | seconds | images/s |", "|---|---|---|",
        f"| plain forward | {fwd:.2f} | {n / fwd:.1f} |",
        f"| dissection (2 passes + IoU) | {dis:.2f} | {n / dis:.1f} |", "",
        f"Dissection / forward time ratio: **{dis / fwd:.2f}×** (two forward passes are the floor).", "",
        "| images | peak extra RSS during dissect (MiB) |", "|---|---|",
        *[f"| {m['images']} | {m['peak_extra_mib']} |" for m in memory], "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
