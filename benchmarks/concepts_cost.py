"""Concept discovery cost relative to the probe pass on the same images, and its memory against the image count.

The shipped EfficientNet-Lite0 (224×224), its last stage (``bn2``: 1280 channels on a 7×7 grid, the
map the head pools), the ``photos`` crops. In each of ``--repeats`` rounds, back to back: the probe
pass (``run_probe`` of the same layer into a fresh folder) and ``discover_concepts`` with NMF at
k = 16 (three seeds, two fitting epochs: the defaults) and with one seed. scikit-learn is imported
before the rounds (a one-time cost of the process, not of a discovery). Reported: wall time and
process CPU time of each, and their ratio to the probe pass of the same round (median over rounds).
The machine is shared with other jobs, so the CPU-time ratio is the steadier figure; the CPU model
and the load average are recorded with the results.

Memory: discovery on n and 2n images with the replay cache off (every pass streams through the
model), each in a fresh process; the peak resident set above the level before the call.

    python benchmarks/concepts_cost.py          # writes benchmarks/results/concepts_cost.{json,md}
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from inspectnet.analysis.concepts.discover import discover_concepts
from inspectnet.core.results import library_versions
from inspectnet.data import load_data
from inspectnet.models.zoo import load_model
from inspectnet.probe.recorder import run_probe

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def machine() -> dict[str, object]:
    info = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    return {"cpu": model, "avx2": " avx2" in flags, "avx512_vnni": "avx512_vnni" in flags,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()}


def one_round(zm, n: int, batch_size: int) -> dict[str, list[float]]:
    data = load_data(f"photos?n={n}")
    with tempfile.TemporaryDirectory() as tmp:
        probe = timed(lambda: run_probe(zm, load_data(f"photos?n={n}", zm.transform()), "last_stage", Path(tmp) / "r",
                                        batch_size=batch_size, device="cpu", show_progress=False))
    default = timed(lambda: discover_concepts(zm, data, "last_stage", "nmf", 16, batch_size=batch_size))
    single = timed(lambda: discover_concepts(zm, data, "last_stage", "nmf", 16, seeds=1, batch_size=batch_size))
    return {"probe": list(probe), "nmf_k16_3seeds": list(default), "nmf_k16_1seed": list(single)}


def memory(n: int) -> float:
    """Peak extra resident memory (MiB) of one discovery on ``n`` images, streaming every pass, in a fresh process."""
    code = f"""
import resource, threading, time
from inspectnet.analysis.concepts.discover import discover_concepts
from inspectnet.data import load_data
from inspectnet.models.zoo import load_model
zm = load_model("shipped:efficientnet_lite0"); data = load_data("photos?n={n}")
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
base = peak = rss(); done = False
def watch():
    global peak
    while not done:
        peak = max(peak, rss()); time.sleep(0.002)
t = threading.Thread(target=watch); t.start()
discover_concepts(zm, data, "last_stage", "nmf", 16, seeds=1, epochs=1, cache_bytes=0)
done = True; t.join()
print((peak - base) / 2 ** 20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    zm = load_model("shipped:efficientnet_lite0")
    import sklearn.decomposition  # noqa: F401  (a one-time import, seconds on a loaded machine: not a per-run cost)

    before = machine()
    rounds = [one_round(zm, args.images, args.batch_size) for _ in range(args.repeats)]
    ratios = {}
    for key in ("nmf_k16_3seeds", "nmf_k16_1seed"):
        for j, kind in enumerate(("wall", "cpu")):
            ratios[f"{key}_{kind}"] = statistics.median(r[key][j] / r["probe"][j] for r in rounds)
    mem = {n: memory(n) for n in (args.images, 2 * args.images)}
    result = {"model": zm.spec, "layer": "bn2 (last_stage)", "images": args.images, "batch_size": args.batch_size,
              "rounds": rounds, "ratio_to_probe_median": ratios, "peak_extra_mib_streaming": mem,
              "machine_before": before, "machine_after": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "versions": library_versions()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "concepts_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Concept discovery cost vs the probe pass (EfficientNet-Lite0 last stage, NMF k = 16)", "",
             f"{args.images} `photos` crops at 224×224, batch {args.batch_size}, {args.repeats} rounds; "
             f"{before['cpu']} ({before['cores']} cores, shared: load average {before['load_average'][0]:.1f} before, "
             f"{result['machine_after']['load_average'][0]:.1f} after), {result['date']}.", "",
             "| run | ratio to probe pass (wall) | ratio (CPU time) |", "|---|---|---|"]
    for key in ("nmf_k16_3seeds", "nmf_k16_1seed"):
        lines.append(f"| {key} | {ratios[key + '_wall']:.2f} | {ratios[key + '_cpu']:.2f} |")
    lines += ["", "Peak extra memory with every pass streaming (MiB): "
              + ", ".join(f"{n} images: {v:.0f}" for n, v in mem.items())]
    (RESULTS / "concepts_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
