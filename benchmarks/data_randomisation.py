"""The data-randomisation sanity check (Adebayo et al. 2018, Sec. 5): do the maps change when the labels
the model learnt from are meaningless?

The same architecture (timm ``test_resnet``, 0.37 M parameters, from the same seeded initialisation)
is trained twice by the same recipe on the same real digits: once on their true labels, once on a
seeded permutation of them (:func:`inspectnet.data.subsets.shuffle_labels`), long enough for the
shuffled model to memorise its training set. Then Integrated Gradients, Layer Grad-CAM, the class
evidence and the random control are drawn by both models for the same held-out images and target
classes (their true labels), and compared by Spearman's ρ (:func:`data_randomisation`): a method
passes when the mean |ρ| is below 0.5. The random control ignores the model and must fail.

Run: python -m benchmarks data_randomisation [--data digits] [--input-size 96] [--epochs 40] [--threads 1]

Writes benchmarks/results/data_randomisation.{json,md}; the two models go to ``--work`` (default runs/).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks import harness
from inspectnet import load_model
from inspectnet.analysis.explain.methods import METHODS, MethodConfig, explanation_maps
from inspectnet.analysis.explain.sanity import data_randomisation
from inspectnet.data import load_data
from inspectnet.data.subsets import random_subset, shuffle_labels, spread_subset
from inspectnet.training.config import TrainConfig
from inspectnet.training.loop import evaluate, train


def trained_pair(args: argparse.Namespace) -> tuple[dict, dict]:
    """The true-label and the shuffled-label model, trained (or resumed) in ``args.work``, with their accuracies."""
    config = TrainConfig(epochs=args.epochs, batch_size=32, lr=args.lr, seed=args.seed)
    models = {}
    for kind in ("true", "shuffled"):
        zm = load_model(args.arch, num_classes=10, in_chans=1, input_size=args.input_size, seed=args.seed)
        fit = random_subset(load_data(f"{args.data}:train", zm.transform()), args.train_images, seed=args.seed)
        fit = shuffle_labels(fit, seed=args.seed) if kind == "shuffled" else fit
        t0 = time.perf_counter()
        train(zm, fit, Path(args.work) / f"data_randomisation_{kind}", config, device="cpu")
        models[kind] = {"zm": zm, "train_seconds": time.perf_counter() - t0,
                        "train_accuracy": evaluate(zm, fit, device="cpu"),
                        "test_accuracy": evaluate(zm, load_data(f"{args.data}:test", zm.transform()),
                                                  device="cpu")}
    return models["true"], models["shuffled"]


def table(doc: dict) -> str:
    """The result as Markdown."""
    m = doc["models"]
    lines = [f"# Data-randomisation sanity check ({doc['arch']}, {doc['data']} at {doc['input_size']} px)", "",
             f"`{doc['command']}` — {doc['threads']} thread(s) (machine and load average: Environment below).", "",
             f"Both models: same seeded initialisation, {doc['epochs']} epochs of SGD (batch 32) on the same "
             f"{doc['train_images']} training digits; one with the true labels, one with a seeded permutation.", "",
             "| model | train accuracy (its own labels) | test accuracy (true labels) | training time |",
             "|---|---|---|---|"]
    for kind in ("true", "shuffled"):
        lines.append(f"| {kind} labels | {100 * m[kind]['train_accuracy']:.1f} % | "
                     f"{100 * m[kind]['test_accuracy']:.1f} % | {m[kind]['train_seconds']:.0f} s |")
    lines += ["", f"Maps of both models for {doc['result']['images']} test digits, target = the true label; "
              f"Spearman ρ per image, averaged; passes when mean |ρ| < {doc['result']['threshold']} "
              "(the maps changed).", "", "| method | map size | mean ρ | mean \\|ρ\\| | verdict |", "|---|---|---|---|---|"]
    for name, r in doc["result"]["methods"].items():
        verdict = {True: "passes", False: "fails", None: "undetermined"}[r["passes"]]
        skipped = f" ({r['skipped']} images not rankable)" if r["skipped"] else ""
        lines.append(f"| {name} | {doc['map_sizes'][name]} | {r['spearman']:.3f} | {r['abs_spearman']:.3f} | "
                     f"{verdict}{skipped} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="test_resnet")
    p.add_argument("--data", default="digits")
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--train-images", type=int, default=256)
    p.add_argument("--images", type=int, default=64, help="held-out images whose maps are compared")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs")
    p.add_argument("--results", default=str(harness.RESULTS))
    args = p.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(args.threads)
    real, shuffled = trained_pair(args)
    test = spread_subset(load_data(f"{args.data}:test", real["zm"].transform()), args.images)
    x = torch.stack([test[i][0] for i in range(len(test))])
    targets = torch.as_tensor(test.labels)
    config = MethodConfig(ig_steps=32)
    result = data_randomisation(real["zm"], shuffled["zm"], x, targets, list(METHODS), indices=range(len(x)),
                                config=config)
    sizes = {m: "×".join(map(str, explanation_maps(m, real["zm"], x[:1], targets[:1], indices=[0],
                                                   config=config).shape[1:])) for m in METHODS}
    doc = {"command": run["command"], "arch": args.arch, "data": args.data, "input_size": args.input_size,
           "epochs": args.epochs,
           "train_images": args.train_images, "threads": args.threads, "ig_steps": config.ig_steps,
           "models": {k: {kk: v for kk, v in m.items() if kk != "zm"} for k, m in (("true", real), ("shuffled", shuffled))},
           "map_sizes": sizes, "result": result}
    harness.write_results("data_randomisation", doc, table(doc), run, out=Path(args.results))
    print(table(doc))
    print(json.dumps(result["methods"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
