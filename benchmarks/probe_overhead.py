"""Probe pass vs a plain forward, and probe memory vs dataset size.

1. Throughput: the probe pass (hooks on two layers, reduction, clone, chunked writes to disk) on
   EfficientNet-Lite0 with its real weights, batch 32, versus a plain ``torch.inference_mode()``
   forward over the same images with the same loader, alternated in one run
   (:func:`benchmarks.harness.alternate`, after one untimed run of each; median of ``--repeats``).
2. Streaming: peak resident memory of probing 5,000 vs 500 MNIST images, each in a fresh process.

Run: python -m benchmarks probe_overhead [--repeats 3]  (writes benchmarks/results/probe_overhead.{json,md})
"""

import argparse
import resource
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from inspectnet.data.datasets import ImageDataset

N_IMAGES, BATCH, THREADS = 128, 32, 2


class CachedImages(ImageDataset):
    """Preprocessed images held as one tensor, unlabelled (shapes' classes mean nothing to an ImageNet
    model), so decoding does not enter the timing."""

    def __init__(self, x: torch.Tensor):
        super().__init__(None)
        self.x, self.spec, self.class_names = x, "shapes-cached", []
        self.labels = np.full(len(x), -1, np.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], -1


def plain_forward(zm, loader) -> None:
    with torch.inference_mode():
        for x, _ in loader:
            zm.model(x)


def probe_pass(zm, cached) -> None:
    from inspectnet import run_probe

    with tempfile.TemporaryDirectory() as tmp:
        run_probe(zm, cached, "blocks.5,conv_head", Path(tmp) / "rec", batch_size=BATCH, device="cpu")


def throughput(repeats: int) -> dict:
    from inspectnet import load_data, load_model

    zm = load_model("shipped:efficientnet_lite0")
    zm.model.eval()
    ds = load_data(f"shapes?n={N_IMAGES}", zm.transform())
    cached = CachedImages(torch.stack([ds[i][0] for i in range(len(ds))]))
    loader = torch.utils.data.DataLoader(cached, batch_size=BATCH)
    t = harness.alternate({"plain": lambda: plain_forward(zm, loader), "probe": lambda: probe_pass(zm, cached)},
                          repeats)
    plain, probe = t["plain"]["median_s"], t["probe"]["median_s"]
    return {"model": "shipped:efficientnet_lite0 (224x224)", "images": N_IMAGES, "batch_size": BATCH,
            "layers": ["blocks.5", "conv_head", "pre_logits"], "plain_s": plain, "probe_s": probe,
            "plain_iqr_s": t["plain"]["iqr_s"], "probe_iqr_s": t["probe"]["iqr_s"], "repeats": repeats,
            "throughput_ratio": plain / probe}


def peak_rss_child(n: int) -> None:
    from inspectnet import load_data, load_model, run_probe

    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=28)
    ds = load_data("mnist5k", zm.transform())
    with tempfile.TemporaryDirectory() as tmp:
        run_probe(zm, ds, "layer3,layer4", Path(tmp) / "rec", batch_size=64, limit=n, device="cpu")
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def streaming() -> dict:
    rss = {}
    for n in (500, 5000):
        out = subprocess.run(harness.self_command("probe_overhead", "--rss", str(n)), capture_output=True, text=True,
                             check=True, cwd=harness.ROOT)
        rss[n] = int(out.stdout.strip().splitlines()[-1]) / 1024
    return {"peak_rss_mib_500": rss[500], "peak_rss_mib_5000": rss[5000],
            "relative_difference": abs(rss[5000] - rss[500]) / rss[500]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="alternated rounds of plain forward and probe pass")
    ap.add_argument("--rss", type=int, metavar="IMAGES", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    if args.rss:  # one measured probe, in the fresh process streaming() started
        peak_rss_child(args.rss)
        return 0
    run = harness.start()
    res = {"throughput": throughput(args.repeats), "streaming": streaming(), "torch_threads": THREADS}
    t, s = res["throughput"], res["streaming"]
    md = (f"| measurement | value |\n|---|---|\n"
          f"| plain forward, {t['images']} images, batch {t['batch_size']} | {t['plain_s']:.2f} s |\n"
          f"| probe pass (2 layers + features + logits to disk) | {t['probe_s']:.2f} s |\n"
          f"| throughput ratio probe / plain (target >= 0.85) | {t['throughput_ratio']:.3f} |\n"
          f"| peak RSS probing 500 MNIST images | {s['peak_rss_mib_500']:.0f} MiB |\n"
          f"| peak RSS probing 5,000 MNIST images | {s['peak_rss_mib_5000']:.0f} MiB |\n"
          f"| relative difference (target < 10 %) | {100 * s['relative_difference']:.1f} % |\n")
    harness.write_results("probe_overhead", res, md, run)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
