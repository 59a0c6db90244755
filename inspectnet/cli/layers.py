"""``inspectnet layers MODEL``: names, types and output shapes of every layer."""

import argparse

from inspectnet.cli.options import add_model_args, emit, model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``layers`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("layers", help="list layer names, types and output shapes",
                       description="List the dotted layer names (usable with --layers), their module types "
                                   "and output shapes from one dummy forward.")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet layers`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.models.layers import list_layers

    zm = model_from_args(args)
    rows = list_layers(zm.model, zm.data_config["input_size"])
    width = max(len(r["name"]) for r in rows)
    text = "\n".join(f"{r['name']:<{width}}  {r['type']:<22} {r['output_shape']!s:<22} {r['params']}"
                     for r in rows)
    header = f"{'name':<{width}}  {'type':<22} {'output shape':<22} params\n"
    emit({"model": zm.spec, "head": zm.head_name, "layers": rows}, args.json,
         header + text + f"\nhead (final linear layer): {zm.head_name}; aliases: pre_logits, head, last_conv, last_stage")
    return 0
