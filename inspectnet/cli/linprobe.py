"""``inspectnet linprobe RECORD --eval RECORD [--out DIR]``: linear-probe accuracy of every probed layer."""

import argparse
from pathlib import Path

from inspectnet.cli.options import emit


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``linprobe`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("linprobe", help="linear-probe accuracy of each probed layer",
                       description="Fit a standardised logistic regression on each probed layer of RECORD "
                                   "(and the penultimate features) against the labels; report test accuracy "
                                   "on --eval across depth.")
    p.add_argument("record", help="train probe record")
    p.add_argument("--eval", dest="eval_record", required=True, help="probe record to score the probes on")
    p.add_argument("--layer", action="append", help="layer(s) to probe (repeatable or comma-separated)")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 regularization strength")
    p.add_argument("--out", help="folder for linprobe.json, linprobe.md and linprobe.png")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet linprobe`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.analysis.linprobe import format_table, linear_probes, plot
    from inspectnet.core.storage import atomic_write_text, check_output_dir
    from inspectnet.probe.record import ProbeRecord

    layers = [name for spec in args.layer or [] for name in spec.split(",") if name] or None
    if args.out:
        check_output_dir(args.out)
    res = linear_probes(ProbeRecord.load(args.record), ProbeRecord.load(args.eval_record), layers, C=args.C)
    text = format_table(res)
    if args.out:
        out = Path(args.out)
        res.save(out / "linprobe.json")
        atomic_write_text(out / "linprobe.md", text + "\n")
        plot(res, out / "linprobe.png")
        text += f"\nwrote {out}/linprobe.json, linprobe.md, linprobe.png"
    emit(res.to_dict(), args.json, text)
    return 0
