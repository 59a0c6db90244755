"""``inspectnet merge RECORD``: join a probe record's per-rank shard folders into one record."""

import argparse

from inspectnet.cli.options import emit


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``merge`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("merge", help="join the per-rank shards of a probe record (written with --shards)",
                       description="Write the rows of every OUT/shards/rank-R-of-P folder at their global "
                                   "positions into OUT's memory-mapped arrays, then remove the shard folders. "
                                   "On machines without a shared filesystem, copy every rank's shards/ folder "
                                   "into OUT first.")
    p.add_argument("record", help="probe record folder holding shards/")
    p.add_argument("--json", action="store_true", help="print the merged record's manifest")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet merge`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.probe.recorder import merge_shards

    rec = merge_shards(args.record)
    emit(rec.manifest, args.json, f"merged probe record {args.record}: {len(rec)} samples")
    return 0
