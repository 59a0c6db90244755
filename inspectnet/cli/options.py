"""Options shared by the commands (model spec, data, device, data passes) and their translation to library calls.

Nothing here imports torch: parsing, ``--help`` and argument errors stay fast (``inspectnet run``
shares ``--class-map``); the library is imported when a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from inspectnet.core.options import MAX_SEED, field_types, options_of

if TYPE_CHECKING:
    from inspectnet.data.datasets import ImageDataset
    from inspectnet.models.zoo import ModelRef, ZooModel


def add_model_args(p: argparse.ArgumentParser, *, spec: bool = True) -> None:
    """Add the options that name and build a model (``MODEL``, ``--weights``, ``--num-classes``, ...).

    Args:
        p: the command's parser.
        spec: add the positional ``model`` argument too.
    """
    if spec:
        p.add_argument("model", help="timm name (resnet18, timm:resnet18), torchvision:NAME, or a saved folder")
    p.add_argument("--weights", help="weights file (.safetensors, or a torch state dict read with weights_only)")
    p.add_argument("--num-classes", type=int, help="number of classifier outputs")
    p.add_argument("--in-chans", type=int, help="input channels (1 for grey images)")
    p.add_argument("--input-size", type=int, help="square input resolution (overrides the model's default)")
    p.add_argument("--pretrained", action="store_true", help="download the zoo's pretrained weights (needs network)")
    p.add_argument("--reset-head", action="store_true",
                   help="replace the classifier by a fresh one with --num-classes outputs (transfer)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="a timm constructor argument (repeatable), e.g. depth=4 patch_size=8; saved with the model")


def model_from_args(args: argparse.Namespace, seed: int | None = 0) -> ZooModel:
    """The model the options describe, loaded.

    Anything initialised at random is seeded (``--seed``, else ``seed``; None = torch's global
    generator), so the same command always starts from the same weights.

    Args:
        args: the parsed command line.
        seed: the seed when the command has no ``--seed``.

    Returns:
        The model.
    """
    return model_ref_from_args(args, seed).load()


def model_ref_from_args(args: argparse.Namespace, seed: int | None = 0) -> ModelRef:
    """The model the arguments name, not loaded yet (see :class:`~inspectnet.models.zoo.ModelRef`).

    It is seeded as in :func:`model_from_args`.

    Args:
        args: the parsed command line.
        seed: the seed when the command has no ``--seed``.

    Returns:
        The reference.
    """
    from inspectnet.models.builders import parse_model_args
    from inspectnet.models.zoo import ModelRef

    return ModelRef(args.model, dict(weights=args.weights, num_classes=args.num_classes, in_chans=args.in_chans,
                                     pretrained=args.pretrained, input_size=args.input_size,
                                     reset_head=args.reset_head, seed=getattr(args, "seed", seed),
                                     build_args=parse_model_args(getattr(args, "model_arg", None)) or None))


def add_data_args(p: argparse.ArgumentParser, *, data: bool = True, limit: bool = True) -> None:
    """Add the options that name and read data (``DATA``, ``--limit``, ``--skip-bad``, ``--device``, ``--class-map``).

    Args:
        p: the command's parser.
        data: add the positional ``data`` argument.
        limit: add ``--limit``.
    """
    if data:
        p.add_argument("data", help="image folder, or mnist5k[:train|:test], digits, shapes, photos, photos100, samples")
    if limit:
        p.add_argument("--limit", type=int, help="use only the first N samples")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted) instead of failing")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda[:N]")
    add_class_map_arg(p)


def add_class_map_arg(p: argparse.ArgumentParser) -> None:
    """Add ``--class-map FILE.json``.

    Args:
        p: the command's parser.
    """
    p.add_argument("--class-map", metavar="FILE.json",
                   help='{"data class": model index or class name}: how the data\'s classes map onto the model\'s '
                        "(default: by WordNet id or class name; placeholder-named models take index order)")


def class_map_from_args(args: argparse.Namespace) -> dict[str, int | str] | None:
    """The ``--class-map`` file's mapping, when one is given.

    Args:
        args: the parsed command line.

    Returns:
        The mapping, or None.
    """
    from inspectnet.data.labels import read_class_map

    return read_class_map(args.class_map) if getattr(args, "class_map", None) else None


def data_from_args(args: argparse.Namespace, zm: ZooModel, spec: str | None = None) -> ImageDataset:
    """The data (``args.data``, or another ``spec`` such as --eval) with its classes mapped onto the model's.

    See :mod:`inspectnet.data.labels`; --class-map keys must be classes of ``args.data``. Files
    skipped by --skip-bad are counted on stderr.

    Args:
        args: the parsed command line.
        zm: the model (its transform and classes).
        spec: the data spec to read instead of ``args.data``.

    Returns:
        The dataset.
    """
    from inspectnet.data import load_data

    ds = load_data(spec or args.data, zm.transform(), skip_bad=args.skip_bad, model_classes=zm.class_names,
                   class_map=class_map_from_args(args), strict=spec is None)
    if ds.skipped:
        sys.stderr.write(f"skipped {len(ds.skipped)} undecodable file(s) of {ds.spec} (--skip-bad), e.g. "
                         f"{ds.skipped[0]}\n")
    return ds


def worker_count(text: str) -> int:
    """``--workers`` as given: a whole number of data loader processes, 0 or more.

    Args:
        text: the option's value.

    Returns:
        The number.

    Raises:
        argparse.ArgumentTypeError: the value is not a whole number of 0 or more.

    Examples:
        >>> worker_count("3")
        3
    """
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more data loader processes (0 decodes in the main "
                                          f"process), got {text!r}")
    return n


def seed(text: str) -> int:
    """An argparse type for ``--seed``: a whole number every generator used here accepts (0 to 2**32 - 1).

    Args:
        text: the value as typed.

    Returns:
        The seed.

    Raises:
        argparse.ArgumentTypeError: not a whole number in range (argparse names the flag).

    Examples:
        >>> seed("7")
        7
    """
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_SEED}, got {text!r}")
    return value


def add_pass_args(p: argparse.ArgumentParser, *, shards: bool = False) -> None:
    """Add ``--workers`` and, for commands that run a data pass under ``torchrun``, how ranks share it out.

    Args:
        p: the command's parser.
        shards: add ``--shards`` (per-rank shard folders) too.
    """
    p.add_argument("--workers", type=worker_count, metavar="N",
                   help="data loader processes decoding images (default: chosen from the CPU count)")
    p.add_argument("--shard-order", choices=("contiguous", "strided"), default="contiguous",
                   help="under torchrun, each rank takes a contiguous run of batches or every P-th batch")
    if shards:
        p.add_argument("--shards", action="store_true",
                       help="under torchrun, each rank writes its rows into OUT/shards/rank-R-of-P (joined by "
                            "`inspectnet merge OUT`, and by the loader) instead of into OUT's shared files")


def workers_from_args(args: argparse.Namespace) -> int:
    """The data loader processes: ``--workers``, else the default for this machine.

    Args:
        args: the parsed command line.

    Returns:
        The number (see :func:`~inspectnet.core.devices.default_workers`).
    """
    from inspectnet.core.devices import default_workers

    return default_workers() if args.workers is None else args.workers


def start_distributed() -> bool:
    """Join the torchrun process group if launched by torchrun.

    Returns:
        True on the rank that reports (rank 0).
    """
    from inspectnet.core.distributed import init_from_env, world

    init_from_env()
    return world()[1] == 0


def emit(obj: Any, as_json: bool, text: str) -> None:
    """Print ``obj`` as JSON when asked, else the human-readable ``text``.

    Args:
        obj: the result (JSON-ready).
        as_json: print JSON.
        text: the human-readable form.
    """
    from inspectnet.core.storage import strict_json

    sys.stdout.write(json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n" if as_json
                     else text + ("\n" if text else ""))


def comma_list(text: str) -> list[str]:
    """A comma-separated option value as a list, blanks dropped.

    Args:
        text: the option's value.

    Returns:
        The items.

    Examples:
        >>> comma_list("layer3, layer4,")
        ['layer3', 'layer4']
    """
    return [s.strip() for s in text.split(",") if s.strip()]


def _converter(annotation: Any) -> tuple[Any, bool]:
    """(argparse ``type``, is it a switch) for a field's type; ``X | None`` reads as X."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:
        return None, True
    if typing.get_origin(annotation) is list:
        return comma_list, False
    if annotation in (int, float, str):
        return annotation, False
    raise TypeError(f"no command-line reading for a field of type {annotation!r}; declare it with cli=False")


def flag_name(field: dataclasses.Field, flag: str | None) -> str:
    """The command-line flag of a config field: its declared ``flag``, else ``--field-name``.

    Args:
        field: the dataclass field.
        flag: its declared flag, or None.

    Returns:
        The flag.
    """
    return flag or "--" + field.name.replace("_", "-")


def add_config_options(p: argparse.ArgumentParser, config: type, *, exclude: Iterable[str] = ()) -> None:
    """Add one argument per declared field of ``config`` (see :mod:`inspectnet.core.options`).

    A field without a default becomes a positional argument; a ``bool`` one a switch; ``list[str]``
    reads a comma-separated value. Help texts end with the field's default, so ``--help`` shows what
    the library would use. Nothing is imported besides ``config``'s own module.

    Args:
        p: the command's parser.
        config: a config dataclass.
        exclude: fields the command adds itself (or not at all).

    Returns:
        None.

    Examples:
        >>> from inspectnet.training.config import TrainConfig
        >>> p = argparse.ArgumentParser(); add_config_options(p, TrainConfig)
        >>> p.parse_args(["--epochs", "2"]).epochs
        2
    """
    hints, skip = field_types(config), set(exclude)
    for f, opt in options_of(config):
        if not opt.cli or f.name in skip:
            continue
        convert, switch = _converter(hints[f.name])
        text = opt.help.replace("%", "%%")
        if f.default is dataclasses.MISSING:
            p.add_argument(f.name, type=convert, metavar=opt.metavar or f.name.upper(), help=text)
            continue
        names = dict(dest=f.name, default=f.default)
        if switch:
            p.add_argument(flag_name(f, opt.flag), action="store_true", help=text, **names)
            continue
        if f.default is not None:
            shown = ",".join(f.default) if isinstance(f.default, list | tuple) else str(f.default)
            text = f"{text} (default: {shown.replace('%', '%%')})"
        flag = flag_name(f, opt.flag)
        p.add_argument(flag, type=convert, choices=opt.choices, help=text, **names,
                       metavar=opt.metavar or (None if opt.choices else flag[2:].upper().replace("-", "_")))


def config_from_args(config: type, args: argparse.Namespace, **values: Any) -> Any:
    """The ``config`` the parsed ``args`` describe; ``values`` give the fields the command sets itself.

    Args:
        config: a config dataclass whose options :func:`add_config_options` added.
        args: the parsed command line.
        **values: fields not read from ``args`` (e.g. a file the command read, the command line itself).

    Returns:
        The config, validated when it is built (errors name the flags: see ``inspectnet.cli.main``).
    """
    given = {f.name: getattr(args, f.name) for f, opt in options_of(config)
             if opt.cli and hasattr(args, f.name) and f.name not in values}
    return config(**given, **values)
