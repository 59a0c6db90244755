"""What an audit costs next to one plain forward pass, and what a cached audit and the command line cost.

1. Audit vs forward (in one process, side by side, both warm): the audit's images are loaded as its
   probe stage loads them (the same data specs mapped onto the model's classes, the same evenly spread
   subsets, transform, ``data_loader``, batch size and ``--workers``), a plain ``torch.inference_mode()``
   forward over the first batches warms the model up (not timed), then plain forward passes over all
   the images alternate with ``--repeats`` audits, each into a fresh folder: F, A, F, A, ..., F. Each
   audit's cost without attributions, export and dissection (its total minus those stages' seconds in
   card.json) is divided by the mean of the two forward passes either side of it; the median of these
   ratios is the figure. The first audit runs every stage (attributions, export and dissection are
   reported as separate ratios); the others skip export and dissection (attributions cannot be
   skipped; their seconds are subtracted). The first audit also pays the first import of the stages'
   libraries (scikit-learn, matplotlib, ...), as a fresh ``inspectnet audit`` process would.
   Two models:
   - the pretrained ``shipped:efficientnet_lite0`` at 224 px over ``--photos`` labelled photo crops
     (the ``photos?n=N`` source: seeded crops of scikit-image photos with an ImageNet class), in-sample;
   - the MNIST ResNet18 (``--mnist-model``; trained for one epoch if absent) on 1,000 train + 500
     test digits.
   Dissection (``--concepts shapes``, 200 images) is reported against a plain forward over the concept images.
2. Cached second audit (the MNIST one, as a fresh process) vs ``python -c 'import torch'``, alternated
   (each round starts at the next command).
3. ``inspectnet --help`` and an argument error vs ``python -c pass``, alternated.

The trust stage is left out of the core figure like attributions (its cost: the ``trust_cost`` benchmark);
a second plain forward per slot feeds the batches channels-last as the probe pass does, for the like-for-like
overhead. ``--core-only`` skips export and dissection in every audit.

Run: python -m benchmarks audit_cost [--photos 1000] [--threads 1] [--repeats 2] [--core-only] [--models lite0],
with OMP_NUM_THREADS=1 set
(writes benchmarks/results/audit_cost.{json,md}). Wall times on a shared machine are noisy: only
ratios measured side by side in this one run are reported, with the machine and its load average
before and after.
"""

import argparse
import dataclasses
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import harness

SPARE = ("attributions", "trust", "export", "dissection")  # trust: its own benchmark, trust_cost
WARM_BATCHES = 2


def probed_datasets(zm, config) -> list:
    """The datasets the audit's probe stage feeds the model: each spec mapped onto the model's classes, at its limit."""
    from inspectnet.data import load_data
    from inspectnet.data.subsets import spread_subset

    specs = [(config.data, config.limit)] + ([(config.eval_data, config.eval_limit)] if config.eval_data else [])
    return [spread_subset(load_data(spec, zm.transform(), model_classes=zm.class_names), limit)
            for spec, limit in specs]


class StageClock:
    """Process CPU seconds of each audit stage, read off ``run_audit``'s log lines (start and end of each stage)."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self._start = 0.0

    def __call__(self, line: str) -> None:
        if not line.startswith("["):
            return
        stage, _, what = line.split("] ", 1)[1].partition(": ")
        if what == "running":
            self._start = time.process_time()
        elif not what.startswith("cached"):
            self.cpu[stage] = round(time.process_time() - self._start, 2)


def plain_forward(zm, datasets: list, batch_size: int, workers: int,
                  batches: int | None = None, channels_last: bool = False) -> tuple[float, float]:
    """(wall, process CPU) seconds of one inference-mode forward over ``datasets`` (its first ``batches``
    only, if given), loaded as the probe stage loads them; with ``channels_last``, each batch is first put in
    the layout the probe pass feeds the model (:func:`inspectnet.models.layers.fast_input`)."""
    from inspectnet.data.loading import data_loader
    from inspectnet.models.layers import fast_input

    zm.model.eval()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for ds in datasets:
            for b, (x, _) in enumerate(data_loader(ds, batch_size=batch_size, num_workers=workers)):
                if batches is not None and b >= batches:
                    break
                zm.model(fast_input(x) if channels_last else x)
    return time.perf_counter() - t0, time.process_time() - c0


def concept_forward(zm, spec: str, limit: int, batch_size: int) -> float:
    """Seconds of a plain forward over the concept images, fed as dissection feeds them."""
    from inspectnet.analysis.dissect.dissection import dissection_transform
    from inspectnet.data.concepts import load_concepts

    t0 = time.perf_counter()
    data, transform = load_concepts(spec), dissection_transform(zm.data_config)
    with torch.inference_mode():
        for s in range(0, limit, batch_size):
            zm.model(torch.stack([transform(data.image(i)) for i in range(s, min(s + batch_size, limit))]))
    return time.perf_counter() - t0


def audit_vs_forward(name: str, zm, config, out: Path, repeats: int, workers: int, core_only: bool = False) -> dict:
    """Forward passes (as loaded, then channels-last) alternated with ``repeats`` audits (the first with every
    stage unless ``core_only``); ratios to the adjacent forwards of each layout."""
    from inspectnet.pipelines.audit import run_audit

    datasets = probed_datasets(zm, config)
    for layout in (False, True):
        plain_forward(zm, datasets, config.batch_size, workers, batches=WARM_BATCHES, channels_last=layout)

    def both() -> tuple[tuple[float, float], tuple[float, float]]:
        return tuple(plain_forward(zm, datasets, config.batch_size, workers, channels_last=cl) for cl in (False, True))

    pairs, audits = [both()], []
    for r in range(repeats):
        cfg = config if r == 0 and not core_only else dataclasses.replace(config, concepts=None, export=False)
        shutil.rmtree(out / f"run{r}", ignore_errors=True)
        clock, c0 = StageClock(), time.process_time()
        doc = run_audit(zm, cfg, out / f"run{r}", log=clock, num_workers=workers)
        cpu_total = time.process_time() - c0
        seconds = {k: s["seconds"] for k, s in doc["sections"].items()}
        core = doc["timing"]["total_seconds"] - sum(seconds.get(k, 0.0) for k in SPARE)
        core_cpu = cpu_total - sum(clock.cpu.get(k, 0.0) for k in SPARE)
        audits.append({"core_s": round(core, 2), "core_cpu_s": round(core_cpu, 2), "stage_s": seconds,
                       "stage_cpu_s": clock.cpu, "statuses": {k: s["status"] for k, s in doc["sections"].items()}})
        pairs.append(both())
    forwards, forwards_cl = [p[0] for p in pairs], [p[1] for p in pairs]
    ratios = [a["core_s"] / ((forwards[r][0] + forwards[r + 1][0]) / 2) for r, a in enumerate(audits)]
    cpu_ratios = [a["core_cpu_s"] / ((forwards[r][1] + forwards[r + 1][1]) / 2) for r, a in enumerate(audits)]
    cl_ratios = [a["core_s"] / ((forwards_cl[r][0] + forwards_cl[r + 1][0]) / 2) for r, a in enumerate(audits)]
    cl_cpu_ratios = [a["core_cpu_s"] / ((forwards_cl[r][1] + forwards_cl[r + 1][1]) / 2) for r, a in enumerate(audits)]
    probe_cpu = [a["stage_cpu_s"]["probe"] / ((forwards_cl[r][1] + forwards_cl[r + 1][1]) / 2)
                 for r, a in enumerate(audits)]
    first, forward = audits[0]["stage_s"], statistics.mean(f for f, _ in forwards)
    concepts = concept_forward(zm, config.concepts, config.concept_limit, config.batch_size) if not core_only else None
    return {"model": name, "images": sum(len(ds) for ds in datasets),
            "forward_s": [round(f, 2) for f, _ in forwards], "forward_cpu_s": [round(c, 2) for _, c in forwards],
            "forward_channels_last_s": [round(f, 2) for f, _ in forwards_cl],
            "forward_channels_last_cpu_s": [round(c, 2) for _, c in forwards_cl],
            "channels_last_ratios": [round(q, 3) for q in cl_ratios],
            "channels_last_ratio": round(statistics.median(cl_ratios), 3),
            "channels_last_cpu_ratios": [round(q, 3) for q in cl_cpu_ratios],
            "channels_last_cpu_ratio": round(statistics.median(cl_cpu_ratios), 3),
            "probe_stage_cpu_vs_channels_last_forward": round(statistics.median(probe_cpu), 3),
            "audits": audits,
            "ratios_audit_without_attributions_export_dissection": [round(q, 3) for q in ratios],
            "ratio_audit_without_attributions_export_dissection": round(statistics.median(ratios), 3),
            "cpu_ratios_audit_without_attributions_export_dissection": [round(q, 3) for q in cpu_ratios],
            "cpu_ratio_audit_without_attributions_export_dissection": round(statistics.median(cpu_ratios), 3),
            "concept_forward_s": round(concepts, 2) if concepts else None,
            "stage_s": first, "statuses": audits[0]["statuses"],
            "ratio_attributions": round(first["attributions"] / forward, 3),
            "ratio_export": round(first.get("export", float("nan")) / forward, 3),
            "ratio_dissection_vs_concept_forward": round(first.get("dissection", float("nan")) / (concepts or float("nan")),
                                                         3)}


def alternated(commands: dict[str, list[str]], repeats: int) -> dict[str, dict]:
    """Wall seconds of each command, run ``repeats`` times alternated (:func:`benchmarks.harness.alternate`)."""
    def call(cmd: list[str]):
        return lambda: subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)

    return harness.alternate({k: call(cmd) for k, cmd in commands.items()}, repeats, warmup=0)


def mnist_model(path: Path):
    from inspectnet import load_data, load_model
    from inspectnet.training.loop import TrainConfig, train

    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=28)
        train(zm, load_data("mnist5k:train", zm.transform()), path, TrainConfig(epochs=1))
    return load_model(str(path))


def main(argv: list[str] | None = None) -> int:
    from inspectnet.core.devices import default_workers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=1000)
    ap.add_argument("--work", default="runs/bench_audit_cost")
    ap.add_argument("--mnist-model", default="runs/mnist_r18")
    ap.add_argument("--repeats", type=int, default=2, help="audits per model, alternated with forward passes")
    ap.add_argument("--cli-repeats", type=int, default=3, help="alternated runs of each command-line measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the shared machine's fair share)")
    ap.add_argument("--workers", type=int, default=default_workers(), help="data loader processes, both sides")
    ap.add_argument("--models", default="lite0,mnist", help="which of lite0, mnist to measure")
    ap.add_argument("--core-only", action="store_true", help="no audit runs export or dissection (their ratios are "
                                                              "then not measured)")
    args = ap.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(args.threads)
    from inspectnet import load_model
    from inspectnet.pipelines.audit import AuditConfig

    work, models = Path(args.work), args.models.split(",")
    common = dict(concepts="shapes", concept_limit=200, export=True, batch_size=32, device="cpu")
    rows = []
    if "lite0" in models:
        rows.append(audit_vs_forward(
            "shipped:efficientnet_lite0 (224 px, 1000 classes)", load_model("shipped:efficientnet_lite0"),
            AuditConfig(data=f"photos?n={args.photos}", limit=args.photos, **common), work / "audit_lite0",
            args.repeats, args.workers, args.core_only))
    if "mnist" in models:
        rows.append(audit_vs_forward(
            "MNIST ResNet18 (28 px, 10 classes)", mnist_model(Path(args.mnist_model)),
            AuditConfig(data="mnist5k:train", eval_data="mnist5k:test", limit=1000, eval_limit=500, **common),
            work / "audit_mnist", args.repeats, args.workers, args.core_only))
    wall, timings = {}, {}
    if "mnist" in models:
        cached_cmd = [sys.executable, "-m", "inspectnet", "audit", args.mnist_model, "mnist5k:train", "--eval",
                      "mnist5k:test", "--limit", "1000", "--eval-limit", "500", "--concepts", "shapes", "--export",
                      "--out", str(work / "audit_mnist" / "run0")]
        timings = alternated({"cached_audit": cached_cmd, "import_torch": [sys.executable, "-c", "import torch"],
                           "help": [sys.executable, "-m", "inspectnet", "--help"],
                           "argument_error": [sys.executable, "-m", "inspectnet", "probe", "m", "d", "--workers", "-1"],
                           "python": [sys.executable, "-c", "pass"]}, args.cli_repeats)
        wall = {k: round(t["median_s"], 3) for k, t in timings.items()}
    doc = {"rows": rows, "wall_s": wall, "wall_iqr_s": {k: round(t["iqr_s"], 3) for k, t in timings.items()},
           "torch_threads": torch.get_num_threads(), "workers": args.workers,
           "note": "each ratio is measured side by side in one run"}
    if wall:
        doc["cached_audit_minus_import_torch_s"] = round(wall["cached_audit"] - wall["import_torch"], 3)
    lines = ["# Audit cost vs one warm plain forward pass", "",
             f"torch threads {doc['torch_threads']}, data loader workers {args.workers} (machine and load: "
             "Environment below).", "",
             "The audit's probe pass feeds the model channels-last batches (`fast_input`): the like-for-like overhead "
             "is the ratio to the channels-last plain forward; the ratio to the forward of the batches as loaded is "
             "what the audit costs next to a user's plain `model(x)`.", "",
             "| model | images | warm plain forward s as loaded / channels-last (F, A, F, ...) | audit w/o attributions, "
             "trust, export, dissection vs forward as loaded (median; each audit vs the forwards either side) | same in "
             "process CPU time | **same vs channels-last forward** (wall; CPU) | probe stage CPU vs channels-last "
             "forward CPU | attributions | export | dissection (vs forward over 200 concept images) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        each = ", ".join(f"{q}×" for q in r["ratios_audit_without_attributions_export_dissection"])
        each_cpu = ", ".join(f"{q}×" for q in r["cpu_ratios_audit_without_attributions_export_dissection"])
        each_cl = ", ".join(f"{q}×" for q in r["channels_last_ratios"])
        lines.append(f"| {r['model']} | {r['images']} | {' / '.join(map(str, r['forward_s']))}; "
                     f"{' / '.join(map(str, r['forward_channels_last_s']))} | "
                     f"{r['ratio_audit_without_attributions_export_dissection']}× ({each}) | "
                     f"{r['cpu_ratio_audit_without_attributions_export_dissection']}× ({each_cpu}) | "
                     f"**{r['channels_last_ratio']}×** ({each_cl}); {r['channels_last_cpu_ratio']}× | "
                     f"{r['probe_stage_cpu_vs_channels_last_forward']}× | "
                     f"{r['ratio_attributions']}× | {r['ratio_export']}× | {r['ratio_dissection_vs_concept_forward']}× |")
    runs = [(f"{r['model'].split(' (')[0]} audit {i + 1}", a) for r in rows for i, a in enumerate(r["audits"])]
    lines += ["", "| stage seconds | " + " | ".join(name for name, _ in runs) + " |", "|---|" + "---|" * len(runs)]
    for stage in dict.fromkeys(k for _, a in runs for k in a["stage_s"]):
        lines.append(f"| {stage} | " + " | ".join(f"{a['stage_s'][stage]:.2f} ({a['statuses'][stage]})"
                                                  if stage in a["stage_s"] else "–" for _, a in runs) + " |")
    lines.append("| **without attributions, trust, export, dissection** | "
                 + " | ".join(f"**{a['core_s']}**" for _, a in runs) + " |")
    lines.append("| same, process CPU s | " + " | ".join(str(a["core_cpu_s"]) for _, a in runs) + " |")
    if wall:
        lines += ["", "| command (wall s, alternated) | median | IQR |", "|---|---|---|"]
        lines += [f"| {k} | {v} | {doc['wall_iqr_s'][k]} |" for k, v in wall.items()]
        lines += ["", f"cached audit − `import torch` = {doc['cached_audit_minus_import_torch_s']} s (target ≤ 2 s)."]
    lines += ["", f"{doc['note']}."]
    harness.write_results("audit_cost", doc, "\n".join(lines), run)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
