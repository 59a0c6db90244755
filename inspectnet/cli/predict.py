"""``inspectnet predict MODEL IMAGE...``: top-k classes with names and probabilities."""

import argparse

from inspectnet.cli.options import add_model_args, emit, model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``predict`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("predict", help="top-k classes for image files",
                       description="Print the top-k classes with names and probabilities for each IMAGE.")
    add_model_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true",
                   help='output [{"image", "top": [{"index", "label", "prob"}]}]')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet predict`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.models.predict import predict

    zm = model_from_args(args)
    results = predict(zm, args.images, topk=args.topk, device=args.device)
    text = "\n".join(r["image"] + "\n" + "\n".join(f"  {t['prob']:.4f}  {t['index']:>4}  {t['label']}"
                                                   for t in r["top"]) for r in results)
    emit(results, args.json, text)
    return 0
