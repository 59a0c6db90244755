"""The ``inspectnet`` command: a thin layer over the library, one module per command group.

Each module in this package defines ``register(subparsers)``; it is found automatically.
"""

import argparse
import importlib
import pkgutil
import sys
import warnings

from inspectnet.core.errors import InspectnetError
from inspectnet.core.version import __version__


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; given ``argv`` whose command word names a module, only that module is imported.

    Importing one command module instead of all keeps light commands light: ``inspectnet run``
    (ONNX Runtime only) never imports torch. Help and unknown words still register every command.
    """
    parser = argparse.ArgumentParser(prog="inspectnet", description="Post-hoc inspection of pretrained "
                                     "image classifiers (timm and torchvision zoos).")
    parser.add_argument("--version", action="version", version=f"inspectnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = [info.name for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
             if not info.name.startswith("_") and info.name != "options"]
    word = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    if word in names:
        importlib.import_module(f"{__name__}.{word}").register(sub)
        if word in sub.choices:
            return parser
        names.remove(word)
    for name in names:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input/failure, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command as typed, for the records that say how an output was made
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            result = args.func(args)
    except InspectnetError as exc:
        print(f"inspectnet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("inspectnet: interrupted; nothing complete was lost, re-run the same command to resume",
              file=sys.stderr)
        return 130
    return int(result or 0)
