"""Audit a pretrained model on your own ImageNet-style folders and open its card.

    python examples/audit_folder.py TRAIN_DIR TEST_DIR [--model shipped:efficientnet_lite0] [--out runs/my_audit]

TRAIN_DIR and TEST_DIR hold one sub-folder per class, named by WordNet id (``n02123045``) or by one of
the model's class names (``tabby``); the audit maps them onto the model's own classes and refuses,
naming it, a folder that matches none. Without folders of your own, write two from the labelled photo
crops that ship with scikit-image:

    inspectnet folder photos:train --out data/train && inspectnet folder photos:test --out data/test

The audit fits its analyses on TRAIN_DIR, evaluates them on TEST_DIR and writes card.json, README.md
and card.html into ``--out``; re-running it reuses every stage already computed there.
"""

import argparse
import time
import webbrowser
from pathlib import Path

from inspectnet import AuditConfig, load_model, run_audit


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train", help="folder the analyses are fitted on (one sub-folder per class)")
    parser.add_argument("test", help="folder they are evaluated on")
    parser.add_argument("--model", default="shipped:efficientnet_lite0", help="any model spec (default: %(default)s)")
    parser.add_argument("--input-size", type=int, help="resize the model's input (default: its own)")
    parser.add_argument("--limit", type=int, default=512, help="at most this many fitting images, evenly spread")
    parser.add_argument("--out", default="runs/my_audit")
    parser.add_argument("--open", action="store_true", help="open card.html in a browser when done")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model = load_model(args.model, input_size=args.input_size)
    card = run_audit(model, AuditConfig(data=args.train, eval_data=args.test, limit=args.limit), args.out, log=None)
    seconds = time.perf_counter() - start

    print(f"audited {args.model} on {args.train} (evaluated on {args.test}) in {seconds:.0f} s")
    for name, section in card["sections"].items():
        print(f"  {name:<16} {section['status']}")
    heads = card["sections"].get("decomposition", {}).get("result", {})
    if "accuracy_full" in heads:
        print(f"accuracy over all {heads['num_classes']} classes: {heads['accuracy_full']:.1%}")
    html = Path(args.out).resolve() / "card.html"
    print(f"card: {html}")
    if args.open:
        webbrowser.open(html.as_uri())
    return card


if __name__ == "__main__":
    main()
