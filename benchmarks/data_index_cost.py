"""Cost of a folder's content identity against one probe pass over the same 10,000 files.

Writes 10,000 MNIST images (28×28 grey PNGs, ten class folders) into a scratch folder, then times:
indexing with nothing stored (every file hashed), indexing against the stored index (one ``stat``
per file, nothing read), the same with one file rewritten, reading the folder as a dataset (every
file decoded, as any command does), and one probe pass of a ResNet18 (random weights, 1 channel,
28 px, layer4) over all 10,000 images. Index times are the best of three calls (the machine is
shared). Writes benchmarks/results/data_index_cost.{json,md}.

Run: python -m benchmarks data_index_cost [--files 10000] [--scratch runs/bench/index]   (with OMP_NUM_THREADS=1)
"""

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import harness
from inspectnet import load_data, load_model, run_probe
from inspectnet.data import index as data_index


def write_folder(root: Path, n: int) -> None:
    ds = load_data("mnist5k:train")
    for i in range(n):
        j = i % len(ds)
        path = root / ds.class_names[int(ds.labels[j])] / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.image(j).save(path)


def timed(fn, repeats: int = 1):
    """(best wall time of ``repeats`` calls, the last call's value): the machine is shared, the best is the cost."""
    best, value = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--scratch", default="runs/bench/index")
    args = ap.parse_args(argv)
    run = harness.start()
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    folder = scratch / "imgs"
    write_folder(folder, args.files)
    def cold_index():
        data_index._HASHED.clear()  # as in a fresh process: nothing hashed yet
        return data_index.index_folder(folder)

    cold, first = timed(cold_index, 3)
    warm, second = timed(lambda: data_index.index_folder(folder, first), 3)
    victim = folder / first.files[len(first.files) // 2][0]
    Image.fromarray(np.full((28, 28), 7, np.uint8)).save(victim)
    changed, third = timed(lambda: data_index.index_folder(folder, second))
    assert second.digest == first.digest and third.digest != second.digest
    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=28, seed=0)
    read, ds = timed(lambda: load_data(str(folder), zm.transform()))
    probe, _ = timed(lambda: run_probe(zm, ds, "layer4", scratch / "rec", device="cpu", batch_size=64,
                                       show_progress=False))
    result = {"files": args.files, "cold_index_s": cold, "warm_index_s": warm, "one_changed_index_s": changed,
              "read_folder_s": read, "probe_pass_s": probe, "warm_fraction_of_probe": warm / probe,
              "cold_fraction_of_probe": cold / probe, "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "all")}
    md = [f"# Content identity of an image folder: cost for {args.files:,} files", "",
          f"OMP_NUM_THREADS={result['omp_num_threads']}.", "",
          "| step | seconds | share of the probe pass |", "|---|---:|---:|",
          f"| index, nothing stored (every file hashed) | {cold:.3f} | {cold / probe:.1%} |",
          f"| index against the stored index (stat only) | {warm:.3f} | {warm / probe:.1%} |",
          f"| index with one file rewritten | {changed:.3f} | {changed / probe:.1%} |",
          f"| read the folder as a dataset (every file decoded) | {read:.3f} | {read / probe:.1%} |",
          f"| probe pass, ResNet18 28 px 1 channel, layer4, batch 64 | {probe:.3f} | 100% |"]
    harness.write_results("data_index_cost", result, "\n".join(md), run)
    print("\n".join(md))
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
