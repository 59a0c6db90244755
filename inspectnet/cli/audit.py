"""``inspectnet audit MODEL DATA --out DIR [--eval DATA] [--layers ...] [--layer L] [--concepts DATA] [--export]``.

Runs probe → decomposition → rules → sparsity → linear probes → attributions → explanations →
dissection → export → card, reusing the stages already computed in DIR, and writes DIR/card.json, README.md
and card.html. The work is done by :func:`inspectnet.pipelines.audit.run_audit`.
"""

import argparse
import shlex

from inspectnet.cli.options import (
    add_class_map_arg,
    add_config_options,
    add_model_args,
    add_pass_args,
    class_map_from_args,
    config_from_args,
    emit,
    model_ref_from_args,
    start_distributed,
    workers_from_args,
)
from inspectnet.core.errors import IncompleteResult
from inspectnet.pipelines.audit.config import AuditConfig

_PARSER: argparse.ArgumentParser | None = None


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``audit`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("audit", help="audit a model into an interpretability model card (JSON, Markdown, HTML)",
                       description="Probe MODEL on DATA once, then influential features + decomposed head, rules, "
                                   "sparsity, linear probes, attributions (and dissection / export when asked), "
                                   "and write a model card into --out. Re-running reuses finished stages.")
    add_model_args(p)
    add_config_options(p, AuditConfig)
    p.add_argument("--out", required=True, help="audit folder (cache + card); refused if it holds another model's")
    add_class_map_arg(p)
    p.add_argument("--json", action="store_true", help="print card.json")
    add_pass_args(p)
    p.set_defaults(func=run)
    global _PARSER
    _PARSER = p


def command_line(args: argparse.Namespace) -> str:
    """The canonical command that reproduces this audit (options that differ from their defaults).

    Args:
        args: the parsed ``inspectnet audit`` options.

    Returns:
        The command, shell-quoted.
    """
    parts = ["inspectnet", "audit", args.model, args.data, "--out", args.out]
    defaults = {a.dest: a for a in _PARSER._actions} if _PARSER else {}
    for dest, action in defaults.items():
        if dest in ("model", "data", "out", "help", "json", "func", "workers", "shard_order") \
                or not action.option_strings:
            continue
        value = getattr(args, dest, None)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        parts += [flag] if value is True else [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet audit`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.

    Raises:
        IncompleteResult: the card was written but some of its sections failed (exit status 3).
    """
    from inspectnet.models.provenance import made_by
    from inspectnet.pipelines.audit import run_audit

    reports = start_distributed()
    config = config_from_args(AuditConfig, args, class_map=class_map_from_args(args), command=command_line(args))
    doc = run_audit(model_ref_from_args(args), config, args.out, num_workers=workers_from_args(args),
                    shard_order=args.shard_order, made_by=made_by(args.model))
    if not reports:
        return 0
    failed = [n for n, s in doc["sections"].items() if s["status"] != "ok"]
    emit(doc, args.json, f"wrote {args.out}/card.json, README.md, card.html")
    if failed:  # the card is written and says why; the exit status says that not everything asked for is there
        first = doc["sections"][failed[0]]["error"]
        raise IncompleteResult(f"audit section(s) failed: {', '.join(failed)} ({failed[0]}: {first}); the card "
                               f"in {args.out} marks them")
    return 0
