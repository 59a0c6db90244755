"""``inspectnet folder DATA --out DIR``: write labelled data as an image folder (ROOT/CLASS/IMAGE.png)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``folder`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("folder", help="write labelled data (e.g. photos:train) as an image folder",
                       description="Write DATA as ROOT/CLASS/IMAGE.png, one sub-folder per class named as DATA "
                                   "names it (photos: WordNet ids, as in ImageNet), so any command can read "
                                   "it back as a folder.")
    p.add_argument("data", help="labelled data: photos[:train|:test], photos100, mnist5k, digits, shapes, or a folder")
    p.add_argument("--out", required=True, help="new (or empty) folder to write")
    p.add_argument("--limit", type=int, help="write only the first N images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet folder`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.data import load_data
    from inspectnet.data.datasets import write_folder

    files = write_folder(load_data(args.data), args.out, limit=args.limit)
    classes = sorted({f.parent.name for f in files})
    print(f"wrote {len(files)} images in {len(classes)} class folders to {args.out}: {', '.join(classes)}")
    return 0
