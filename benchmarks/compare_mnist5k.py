"""EBP Table 1 / Fig. 1 on mnist5k: ResNet18 (28×28, grey) at layer4, every method from one base model.

Budget sized for 2 CPU cores: the base model is trained for --base-epochs on mnist5k:train, then
each method is fine-tuned for --epochs on a seeded random --limit training images, probed at layer4 on
those images (thresholds + tree) and on a random --eval-limit test images (reported numbers), for
--seeds seeds. Writes benchmarks/results/compare_mnist5k.{md,json,csv,png}.

    python benchmarks/compare_mnist5k.py            # the committed numbers
"""

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from inspectnet import load_data, load_model
from inspectnet.core.storage import atomic_write_json, atomic_write_text
from inspectnet.data.subsets import random_subset
from inspectnet.models.zoo import CONFIG_FILE
from inspectnet.pipelines.compare import compare, expand_methods, markdown_table, parse_sweep, split_plugin_list
from inspectnet.training.loop import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_PLUGINS = ("vanilla,ebp:K=25,lam=1e-2,kwta:k=0.2,dutycycle:density=0.7,boost=8,easr:lam=5e-5,"
                   "sparseout:p=0.3,q=2.5,san,cgl:layers=layer4.*.conv*")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/inspectnet_bench/compare_mnist5k", help="base model + run folders")
    ap.add_argument("--plugins", default=DEFAULT_PLUGINS)
    ap.add_argument("--sweep", action="append", default=[])
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--base-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--limit", type=int, default=400)
    ap.add_argument("--eval-limit", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="compare_mnist5k", help="results file stem")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    t0 = time.perf_counter()
    base = work / "base"
    if not (base / CONFIG_FILE).exists():  # the shared starting checkpoint (recipe of the foundation README)
        torch.manual_seed(0)
        zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=28)
        ds = load_data("mnist5k:train", zm.transform())
        zm.class_names = list(ds.class_names)
        train(zm, ds, base, TrainConfig(epochs=args.base_epochs, batch_size=64, lr=0.05), device="cpu")
    base_seconds = time.perf_counter() - t0
    zm = load_model(str(base))
    # seeded random subsets, as `inspectnet compare --limit` draws them
    train_ds = random_subset(load_data("mnist5k:train", zm.transform()), args.limit)
    test_ds = random_subset(load_data("mnist5k:test", zm.transform()), args.eval_limit)
    methods = expand_methods(split_plugin_list(args.plugins), layer=args.layer,
                             sweeps=dict(parse_sweep(s) for s in args.sweep))
    config = TrainConfig(epochs=args.epochs, batch_size=64, lr=args.lr)
    t1 = time.perf_counter()
    result = compare(lambda: load_model(str(base)), train_ds, test_ds, methods, args.layer, work / "runs",
                     config=config, seeds=list(range(args.seeds)), device="cpu", log=lambda line: print(line, flush=True))
    compare_seconds = time.perf_counter() - t1
    command = "python benchmarks/compare_mnist5k.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta = {"command": command.strip(), "base_model": "resnet18 (timm), 1×28×28, 10 classes, trained "
            f"{args.base_epochs} epochs on mnist5k:train (sgd lr 0.05 cosine, batch 64)",
            "base_seconds (0 = reused from --work)": round(base_seconds, 1), "compare_seconds": round(compare_seconds, 1),
            "machine": f"{platform.machine()}, torch threads {args.threads}, CPU",
            "equivalent_cli": (f"inspectnet train resnet18 mnist5k:train --num-classes 10 --in-chans 1 "
                               f"--input-size 28 --epochs {args.base_epochs} --out BASE && inspectnet compare BASE "
                               f"mnist5k:train --plugins {args.plugins} --layer {args.layer} --epochs {args.epochs} "
                               f"--lr {args.lr} --limit {args.limit} --eval-limit {args.eval_limit} "
                               f"--seeds {args.seeds} --out OUT")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{args.name}.json", {"meta": meta, **result.to_dict()})
    md = (f"# {args.name}\n\nReproduce: `{meta['command']}`\n\nEquivalent commands: `{meta['equivalent_cli']}`\n\n"
          f"{meta['base_model']}; fine-tuning {args.epochs} epoch(s) on a random {args.limit} training images (seed 0) "
          f"(sgd lr {args.lr} cosine, batch 64); rules fit on those {args.limit} images, reported on a random "
          f"{args.eval_limit} test images; layer {args.layer}; mean ± std over {args.seeds} seeds. "
          f"Accuracies and fidelity in %. Time: base {meta['base_seconds (0 = reused from --work)']} s, comparison "
          f"{meta['compare_seconds']} s ({meta['machine']}).\n\n{markdown_table(result)}\n")
    atomic_write_text(RESULTS / f"{args.name}.md", md)
    (RESULTS / f"{args.name}.csv").write_text((work / "runs" / "compare.csv").read_text())
    (RESULTS / f"{args.name}.png").write_bytes((work / "runs" / "compare.png").read_bytes())
    print(md)
    print(json.dumps({k: v for k, v in meta.items() if "seconds" in k}))


if __name__ == "__main__":
    main()
