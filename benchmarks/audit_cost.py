"""What an audit costs next to one plain forward pass, and what a cached audit and the command line cost.

1. Audit vs forward (in one process, side by side): one plain ``torch.inference_mode()`` forward pass
   over the audit's images (loaded from the same data spec with the same transform, loader and batch
   size) is timed before and after the audit; the audit's cost without attributions, export and
   dissection is its total time minus those stages (each stage's seconds are in card.json). Two models:
   - the pretrained ``shipped:efficientnet_lite0`` at 224 px over ``--photos`` labelled photo crops
     (the ``photos?n=N`` source: seeded crops of scikit-image photos with an ImageNet class), in-sample;
   - the MNIST ResNet18 (``--mnist-model``; trained for one epoch if absent) on 1,000 train + 500
     test digits.
   Attributions and export are reported against the same forward pass; dissection (``--concepts
   shapes``, 200 images) against a plain forward over the concept images.
2. Cached second audit (the MNIST one, as a fresh process) vs ``python -c 'import torch'``, alternated.
3. ``inspectnet --help`` and an argument error vs ``python -c pass``, alternated.

Run: python benchmarks/audit_cost.py [--photos 1000] [--work runs/bench_audit_cost]
(writes benchmarks/results/audit_cost.{json,md}). Wall times on a shared machine are noisy: only
ratios measured side by side in this one run are reported.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SPARE = ("attributions", "export", "dissection")


def plain_forward(zm, specs: list[tuple[str, int | None]], batch_size: int) -> tuple[float, int]:
    """(seconds, images) to load ``specs`` (data spec, limit) and run one inference-mode forward over them."""
    from inspectnet.data import load_data
    from inspectnet.data.subsets import spread_subset

    t0, images = time.perf_counter(), 0
    with torch.inference_mode():
        for spec, limit in specs:
            ds = spread_subset(load_data(spec, zm.transform()), limit)
            images += len(ds)
            for x, _ in torch.utils.data.DataLoader(ds, batch_size=batch_size):
                zm.model(x)
    return time.perf_counter() - t0, images


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


def audit_vs_forward(name: str, zm, config, out: Path) -> dict:
    from inspectnet.pipelines.audit import run_audit

    specs = [(config.data, config.limit)] + ([(config.eval_data, config.eval_limit)] if config.eval_data else [])
    shutil.rmtree(out, ignore_errors=True)
    before, images = plain_forward(zm, specs, config.batch_size)
    doc = run_audit(zm, config, out, log=None)
    after, _ = plain_forward(zm, specs, config.batch_size)
    concepts = concept_forward(zm, config.concepts, config.concept_limit, config.batch_size)
    forward = (before + after) / 2
    seconds = {k: s["seconds"] for k, s in doc["sections"].items()}
    core = doc["timing"]["total_seconds"] - sum(seconds.get(k, 0.0) for k in SPARE)
    return {"model": name, "images": images,
            "forward_s": {"before": round(before, 2), "after": round(after, 2)},
            "concept_forward_s": round(concepts, 2), "audit_total_s": doc["timing"]["total_seconds"],
            "stage_s": seconds, "statuses": {k: s["status"] for k, s in doc["sections"].items()},
            "ratio_audit_without_attributions_export_dissection": round(core / forward, 3),
            "ratio_attributions": round(seconds["attributions"] / forward, 3),
            "ratio_export": round(seconds.get("export", float("nan")) / forward, 3),
            "ratio_dissection_vs_concept_forward": round(seconds.get("dissection", float("nan")) / concepts, 3)}


def alternated(commands: dict[str, list[str]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each command, run in turn ``repeats`` times."""
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(repeats):
        for k, cmd in commands.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
            times[k].append(time.perf_counter() - t0)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def mnist_model(path: Path):
    from inspectnet import load_data, load_model
    from inspectnet.training.loop import TrainConfig, train

    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=28)
        train(zm, load_data("mnist5k:train", zm.transform()), path, TrainConfig(epochs=1))
    return load_model(str(path))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=1000)
    ap.add_argument("--work", default="runs/bench_audit_cost")
    ap.add_argument("--mnist-model", default="runs/mnist_r18")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from inspectnet import load_model
    from inspectnet.pipelines.audit import AuditConfig

    work = Path(args.work)
    common = dict(concepts="shapes", concept_limit=200, export=True, batch_size=32, device="cpu")
    rows = [audit_vs_forward("shipped:efficientnet_lite0 (224 px, 1000 classes)", load_model("shipped:efficientnet_lite0"),
                             AuditConfig(data=f"photos?n={args.photos}", limit=args.photos, **common), work / "audit_lite0"),
            audit_vs_forward("MNIST ResNet18 (28 px, 10 classes)", mnist_model(Path(args.mnist_model)),
                             AuditConfig(data="mnist5k:train", eval_data="mnist5k:test", limit=1000, eval_limit=500,
                                         **common), work / "audit_mnist")]
    cached_cmd = [sys.executable, "-m", "inspectnet", "audit", args.mnist_model, "mnist5k:train", "--eval",
                  "mnist5k:test", "--limit", "1000", "--eval-limit", "500", "--concepts", "shapes", "--export",
                  "--out", str(work / "audit_mnist")]
    wall = alternated({"cached_audit": cached_cmd, "import_torch": [sys.executable, "-c", "import torch"],
                       "help": [sys.executable, "-m", "inspectnet", "--help"],
                       "argument_error": [sys.executable, "-m", "inspectnet", "probe", "m", "d", "--workers", "-1"],
                       "python": [sys.executable, "-c", "pass"]}, args.repeats)
    doc = {"rows": rows, "wall_s": wall,
           "cached_audit_minus_import_torch_s": round(wall["cached_audit"] - wall["import_torch"], 3),
           "torch_threads": torch.get_num_threads(),
           "note": "shared 2-core machine under load from other jobs; each ratio is measured side by side in one run"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "audit_cost.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# Audit cost vs one plain forward pass", "",
             "| model | images | plain forward s | audit w/o attributions, export, dissection | attributions | "
             "export | dissection (vs forward over 200 concept images) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["forward_s"]
        lines.append(f"| {r['model']} | {r['images']} | {f['before']} / {f['after']} | "
                     f"**{r['ratio_audit_without_attributions_export_dissection']}×** | {r['ratio_attributions']}× | "
                     f"{r['ratio_export']}× | {r['ratio_dissection_vs_concept_forward']}× |")
    lines += ["", "| stage seconds | " + " | ".join(r["model"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for stage in rows[0]["stage_s"]:
        lines.append(f"| {stage} | " + " | ".join(f"{r['stage_s'].get(stage, 0):.2f} ({r['statuses'].get(stage)})"
                                                  for r in rows) + " |")
    lines += ["", "| command (median wall s, alternated) | s |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in wall.items()]
    lines += ["", f"cached audit − `import torch` = {doc['cached_audit_minus_import_torch_s']} s (target ≤ 2 s); "
                  f"{doc['note']}."]
    (RESULTS / "audit_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
