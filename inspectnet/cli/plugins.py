"""``inspectnet plugins [--json]``: the fine-tuning plugins, their hyperparameters, defaults and papers."""

import argparse

from inspectnet.cli.options import emit


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``plugins`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("plugins", help="list fine-tuning plugins and their hyperparameters",
                       description="List every plugin registered in the inspectnet.plugins entry-point group. A plugin "
                                   "that fails to load is named in one error line after the others are listed.")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet plugins``: list every plugin that loads, then fail naming those that do not.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.

    Raises:
        InspectnetError: a plugin that is installed cannot be loaded (the message names each).
    """
    from inspectnet.core.errors import InspectnetError
    from inspectnet.plugins import describe_plugins

    errors: dict[str, str] = {}
    plugins = describe_plugins(errors)
    lines = []
    for d in plugins:
        lines.append(f"{d['name']}: {d['summary']}" + ("  [needs labels]" if d["needs_labels"] else ""))
        lines.append(f"  paper: {d['paper']}")
        for h in d["hyperparameters"]:
            bounds = f" in {h['choices']}" if "choices" in h else ""
            if "low" in h or "high" in h:
                bounds = f" in [{h.get('low', '-inf')}, {h.get('high', 'inf')}]"
            lines.append(f"  {h['name']}={h['default']!r} ({h['type']}{bounds}): {h['help']}")
    emit(plugins, args.json, "\n".join(lines))
    if errors:  # the others are listed; the exit status says that not every plugin is usable
        raise InspectnetError("; ".join(errors.values()))
    return 0
