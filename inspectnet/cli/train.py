"""``inspectnet train MODEL DATA --epochs N --out DIR``: supervised training / fine-tuning."""

import argparse
import sys

from inspectnet.cli import options
from inspectnet.cli.options import add_config_options, add_data_args, add_model_args, data_from_args, emit, model_from_args
from inspectnet.training.config import TrainConfig


def log_line(message: str) -> None:
    """A progress line on stderr (stdout carries the result).

    Args:
        message: the line.
    """
    print(message, file=sys.stderr, flush=True)


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Add the training options: every :class:`~inspectnet.training.config.TrainConfig` field, ``--eval``, ``--out``.

    Args:
        p: the command's parser.
    """
    add_config_options(p, TrainConfig)
    p.add_argument("--eval", dest="eval_data", help="labelled data to report accuracy on after each epoch")
    p.add_argument("--out", required=True, help="output model folder (resumes if it holds a checkpoint)")
    p.add_argument("--json", action="store_true", help="print the per-epoch metrics as JSON")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The training configuration the parsed options describe.

    Args:
        args: the parsed command line.

    Returns:
        The validated :class:`~inspectnet.training.config.TrainConfig`.
    """
    return options.config_from_args(TrainConfig, args)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("train", help="train or fine-tune with cross-entropy",
                       description="Train MODEL on DATA and save it as a folder the zoo loads back. "
                                   "Checkpoints every epoch; re-running the same command resumes.")
    add_model_args(p)
    add_data_args(p, limit=False)
    add_train_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet train`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.models.provenance import record_command
    from inspectnet.models.zoo import adopt_class_names
    from inspectnet.training.loop import epoch_line, train

    config = config_from_args(args)  # bad values are refused before the model and data load
    zm = model_from_args(args)
    ds = adopt_class_names(zm, data_from_args(args, zm))
    eval_ds = data_from_args(args, zm, args.eval_data) if args.eval_data else None
    history = train(zm, ds, args.out, config, eval_data=eval_ds, device=args.device, log=log_line)
    record_command(args.out, ["inspectnet", *args.argv], start=args.model)
    emit(history, args.json, "\n".join(epoch_line(h) for h in history) + f"\nsaved model to {args.out}")
    return 0
