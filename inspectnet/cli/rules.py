"""``inspectnet rules RECORD --layer L [--eval RECORD] --out DIR``: decision-tree rules over filter atoms."""

import argparse

from inspectnet.cli.options import emit, seed
from inspectnet.core.storage import check_output_dir


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``rules`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("rules", help="extract decision-tree rules that mimic the model from a probed layer",
                       description="Quantize each filter of --layer (active if above μ+σ fitted on RECORD), fit "
                                   "an entropy decision tree to the model's own predictions (size chosen by "
                                   "cost-complexity pruning on a validation split, or --max-depth), and write "
                                   "DIR/rules.json, rules.txt and tree.png.")
    p.add_argument("record", help="train probe record (thresholds and tree are fit on it)")
    p.add_argument("--layer", required=True, help="probed layer name in the record")
    p.add_argument("--eval", dest="eval_record", help="probe record to report fidelity/accuracy on (test split)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quantize", default="mean_std", choices=["mean_std", "quantile", "fixed"],
                   help="threshold: mean_std (μ + k·σ, EBP), quantile (q-quantile), fixed (one value)")
    p.add_argument("--quantize-param", type=float,
                   help="k for mean_std (default 1), q for quantile (default 0.9), the value for fixed")
    p.add_argument("--max-depth", type=int, help="fixed tree depth instead of cost-complexity pruning")
    p.add_argument("--val-fraction", type=float, default=0.25, help="validation part of RECORD for pruning")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--plot-depth", type=int, default=4, help="levels of the tree drawn in tree.png")
    p.add_argument("--json", action="store_true", help="print rules.json to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet rules`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.analysis.rules.tree import extract_rules, summary, write_rules
    from inspectnet.probe.record import ProbeRecord

    check_output_dir(args.out)
    train = ProbeRecord.load(args.record)
    ev = ProbeRecord.load(args.eval_record) if args.eval_record else None
    rs, model = extract_rules(train, args.layer, ev, quantize=args.quantize, quantize_param=args.quantize_param,
                              max_depth=args.max_depth, val_fraction=args.val_fraction, seed=args.seed)
    write_rules(rs, model, args.out, plot_depth=args.plot_depth)
    text = summary(rs)
    lines = text.splitlines()
    if len(lines) > 21:
        text = "\n".join(lines[:21] + [f"... {len(lines) - 21} more rules in {args.out}/rules.txt"])
    emit(rs.to_dict(), args.json, text + f"\nwrote {args.out}/rules.json, rules.txt, tree.png")
    return 0
