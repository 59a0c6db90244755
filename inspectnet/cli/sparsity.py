"""``inspectnet sparsity RECORD [--layer L] [--json]``: activity-sparsity metrics of probed layers."""

import argparse

from inspectnet.cli.options import emit


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sparsity`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("sparsity", help="Hoyer, kurtosis and Treves-Rolls sparsity of probed layers",
                       description="Compute the EBP Table 1 sparsity metrics (Hoyer, lifetime/population "
                                   "kurtosis, Treves-Rolls population/lifetime, activity sparseness) of each "
                                   "probed layer's activation matrix (images x filters).")
    p.add_argument("record", help="probe record folder")
    p.add_argument("--layer", action="append", help="layer to measure (repeatable; default: all probed layers)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet sparsity`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.analysis.sparsity import format_table, record_sparsity
    from inspectnet.probe.record import ProbeRecord

    rec = ProbeRecord.load(args.record)
    layers = [name for spec in args.layer or [] for name in spec.split(",") if name] or None
    rows = record_sparsity(rec, layers)
    emit([r.to_dict() for r in rows], args.json, format_table(rows))
    return 0
