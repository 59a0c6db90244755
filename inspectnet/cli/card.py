"""``inspectnet card DIR [--copy-to DEST]``: re-render DIR/README.md and DIR/card.html from DIR/card.json."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``card`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("card", help="re-render an audit's README.md and card.html from its card.json",
                       description="Read DIR/card.json (the source of truth written by `inspectnet audit`) and "
                                   "write DIR/README.md (Hugging Face format) and DIR/card.html again.")
    p.add_argument("dir", help="audit folder holding card.json")
    p.add_argument("--copy-to", help="also write the card and its figures (no caches) into this folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet card`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.pipelines.audit.card import publish, rerender
    from inspectnet.reports.card import check_copy_target

    if args.copy_to:
        check_copy_target(args.copy_to)  # before anything is written
    paths = rerender(args.dir)
    print(f"wrote {paths['markdown']} and {paths['html']}")
    if args.copy_to:
        copied = publish(args.dir, args.copy_to)
        print(f"copied the card to {copied['json'].parent}")
    return 0
