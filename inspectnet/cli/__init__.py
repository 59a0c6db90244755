"""The ``inspectnet`` command: a thin layer over the library, one module per command group.

Each module in this package defines ``register(subparsers)``; it is found automatically.
"""

import argparse
import errno
import importlib
import os
import pkgutil
import sys
import warnings
from typing import Any

from inspectnet.core.errors import InspectnetError, InvalidParameterError
from inspectnet.core.locks import output_lock
from inspectnet.core.storage import check_apart
from inspectnet.core.version import __version__

TRACEBACK_ENV = "INSPECTNET_TRACEBACK"
EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 130
# commands that write an output (--out) a second command must not write at the same time
DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EFBIG, errno.EPERM)
DATA_ARGS = ("data", "eval_data", "concepts", "calibration")  # options that name data (an image folder, say)
WRITERS = ("audit", "probe", "export", "dissect", "rules", "train", "finetune")


class _Parser(argparse.ArgumentParser):
    """Usage errors become one :class:`InspectnetError` line like every other bad input."""

    def error(self, message: str) -> None:
        command = self.prog.partition(" ")[2]
        raise InspectnetError(f"{command + ': ' if command else ''}{message} (see `{self.prog} --help`)")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; given ``argv`` whose command word names a module, only that module is imported.

    Importing one command module instead of all keeps light commands light: ``inspectnet run``
    (ONNX Runtime only) never imports torch. Help and unknown words still register every command.

    Args:
        argv: the command line (without the program name), or None to register every command.

    Returns:
        The parser.
    """
    parser = _Parser(prog="inspectnet", description="Post-hoc inspection of pretrained "
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
    """Run the command line and return the exit status; errors print one ``inspectnet: error:`` line.

    Exit codes: 0 ok, 2 bad input or an explained failure, 3 output written but an asked-for part
    failed (see :mod:`inspectnet.core.errors`), 1 an unexpected internal error (set
    ``INSPECTNET_TRACEBACK=1`` to see its traceback), 130 interrupted.

    Args:
        argv: the command line without the program name (None: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = args = None
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        args.argv = argv  # the command as typed, for the records that say how an output was made
        if getattr(args, "out", None):  # before the lock: it may create the output's parent folders
            check_apart(args.out, {("DATA" if n == "data" else f"--{n.replace('_', '-')}"): getattr(args, n, None)
                                   for n in DATA_ARGS})
        with warnings.catch_warnings(), output_lock(getattr(args, "out", None) if args.command in WRITERS else None,
                                                    f"inspectnet {args.command}"):
            warnings.simplefilter("default")
            warnings.showwarning = _warning_line
            result = args.func(args)
    except InvalidParameterError as exc:  # the library names keywords; the command line names its flags
        _error(str(exc.with_flags(command_flags(parser, args))))
        return exc.exit_code
    except InspectnetError as exc:
        _error(str(exc))
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in DISK_ERRORS or os.environ.get(TRACEBACK_ENV):
            return _internal(exc)
        _error(_disk_error(exc, getattr(args, "out", None)))
        return InspectnetError.exit_code
    except KeyboardInterrupt:
        print("inspectnet: interrupted; nothing complete was lost, re-run the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback only when asked for
        return _internal(exc)
    return int(result or 0)


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """A warning as one ``inspectnet: warning:`` line: the user needs what happened, not our source line."""
    print(f"inspectnet: warning: {message}", file=sys.stderr if file is None else file)


def _disk_error(exc: OSError, out: str | None) -> str:
    """A full, read-only or forbidden disk is the machine's state, not a bug: one line naming the path."""
    what = "no permission for" if exc.errno in (errno.EACCES, errno.EPERM) else "cannot write"
    return (f"{what} {exc.filename or out or 'the output'}: {exc.strerror or exc} (free space or choose a "
            f"writable --out; what was written is incomplete and no later command accepts it)")


def _internal(exc: Exception) -> int:
    if os.environ.get(TRACEBACK_ENV):
        raise exc
    _error(f"internal error {type(exc).__name__}: {exc} (a bug; set {TRACEBACK_ENV}=1 to see where)")
    return EXIT_INTERNAL


def command_flags(parser: argparse.ArgumentParser | None, args: argparse.Namespace | None) -> dict[str, str]:
    """Parameter -> how the running command spells it (``--k1``, or ``DATA`` for a positional).

    Args:
        parser: the full parser.
        args: the parsed command line (None when parsing failed).

    Returns:
        The flags of the command ``args`` ran ({} when there is none).

    Examples:
        >>> command_flags(build_parser(["train"]), argparse.Namespace(command="train"))["batch_size"]
        '--batch-size'
    """
    command = getattr(args, "command", None)
    subparsers = [a for a in getattr(parser, "_actions", []) if isinstance(a, argparse._SubParsersAction)]
    if command is None or not subparsers or command not in subparsers[0].choices:
        return {}
    flags = {}
    for action in subparsers[0].choices[command]._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        flags[action.dest] = longs[0] if longs else (action.metavar or action.dest.upper())
    return flags


def _error(message: str) -> None:
    """One line on stderr, however many lines the message has."""
    print("inspectnet: error: " + " ".join(message.split()), file=sys.stderr)
