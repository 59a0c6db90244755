"""Fine-tune a model with an interpretability plugin and compare sparsity and rules before and after.

    python examples/finetune_and_compare.py MODEL TRAIN_DATA EVAL_DATA --plugin ebp:K=25,lam=0.1,layer=layer4 \
        --layer layer4 [--epochs 2] [--out runs/compare]

MODEL is a folder saved by ``inspectnet train`` (or any model spec with a head for the data's classes).
Both models are probed on the same data at ``--layer``; the table gives the Hoyer sparsity of that
layer (0 = dense, 1 = one active filter per image) and the decision-tree rules extracted over its
filters (fewer atoms and rules at the same fidelity = a model that is easier to describe).
"""

import argparse
import time
from pathlib import Path

from inspectnet import (
    TrainConfig,
    extract_rules,
    finetune,
    load_data,
    load_finetuned,
    load_model,
    record_sparsity,
    run_probe,
)


def measure(model, train_data: str, eval_data: str, layer: str, out: Path, limit: int | None) -> dict:
    """Accuracy, Hoyer sparsity of ``layer`` and its rules' size and fidelity on ``eval_data``."""
    fit = run_probe(model, load_data(train_data, model.transform()), layer, out / "fit", limit=limit, show_progress=False)
    held = run_probe(model, load_data(eval_data, model.transform()), layer, out / "eval", show_progress=False)
    sparsity = record_sparsity(held, [layer])[0]
    rules, _ = extract_rules(fit, layer, held)
    return {"accuracy": held.accuracy(), "hoyer": sparsity.hoyer, "rules": rules.rules, "atoms": rules.atoms,
            "fidelity": rules.fidelity}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("train_data")
    parser.add_argument("eval_data")
    parser.add_argument("--plugin", default="ebp:K=25,lam=0.1,layer=layer4", help="plugin spec (default %(default)s)")
    parser.add_argument("--layer", default="layer4", help="layer whose sparsity and rules are compared")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, help="at most this many training images")
    parser.add_argument("--out", default="runs/compare")
    args = parser.parse_args(argv)
    out = Path(args.out)

    start = time.perf_counter()
    base = load_model(args.model)
    before = measure(base, args.train_data, args.eval_data, args.layer, out / "before", args.limit)
    finetune(base, load_data(args.train_data, base.transform()), out / "finetuned", [args.plugin],
             TrainConfig(epochs=args.epochs, limit=args.limit))
    tuned, _ = load_finetuned(out / "finetuned")  # forward-altering plugins (k-WTA, SAN) come back attached
    after = measure(tuned, args.train_data, args.eval_data, args.layer, out / "after", args.limit)

    print(f"{'':<10}{'accuracy':>10}{'hoyer':>8}{'rules':>7}{'atoms':>7}{'fidelity':>10}")
    for name, m in (("before", before), ("after", after)):
        print(f"{name:<10}{m['accuracy']:>10.1%}{m['hoyer']:>8.3f}{m['rules']:>7}{m['atoms']:>7}{m['fidelity']:>10.1%}")
    print(f"{args.plugin} on {args.layer}, {args.epochs} epochs: {time.perf_counter() - start:.0f} s")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
