"""``inspectnet compare MODEL DATA --plugins vanilla,ebp,kwta --layer L --epochs N --out DIR [--seeds 3]``."""

import argparse
import sys

from inspectnet.cli.options import add_data_args, add_model_args, data_from_args, emit, model_from_args
from inspectnet.core.errors import InspectnetError
from inspectnet.core.storage import check_output_dir
from inspectnet.training.config import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``compare`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("compare", help="fine-tune with several methods and compare rules, sparsity, accuracy",
                       description="Fine-tune MODEL on DATA once per method (vanilla or a plugin spec) and seed, "
                                   "probe --layer, extract rules and measure sparsity; write the EBP Table 1 "
                                   "layout (compare.md/.csv/.json, mean ± std over seeds) and a Fig. 1 style "
                                   "plot (compare.png) to --out. Re-running resumes finished runs.")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--eval", dest="eval_data",
                   help="test data (default: DATA with :train replaced by :test)")
    p.add_argument("--plugins", required=True, action="append",
                   help="comma-separated methods: vanilla and plugin specs, e.g. vanilla,ebp:K=25,lam=1e-3,kwta:k=0.2")
    p.add_argument("--sweep", action="append", default=[],
                   help="PLUGIN.PARAM=v1/v2/... one run per value (Fig. 1 style plot); repeatable")
    p.add_argument("--layer", required=True, help="layer to regularize (filled into plugins) and to explain")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1) per method")
    p.add_argument("--eval-limit", type=int, help="use a random subset (seed 0) of N test samples")
    p.add_argument("--max-depth", type=int, help="fixed tree depth instead of cost-complexity pruning")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="print compare.json to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet compare`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.

    Raises:
        InspectnetError: ``--seeds`` is below 1 (or an input is refused on the way).
    """
    from inspectnet.data.subsets import random_subset
    from inspectnet.pipelines.compare import compare, expand_methods, markdown_table, parse_sweep, split_plugin_list

    if args.seeds < 1:
        raise InspectnetError(f"--seeds must be at least 1, got {args.seeds}")
    plugins = [s for text in args.plugins for s in split_plugin_list(text)]
    sweeps = dict(parse_sweep(s) for s in args.sweep)
    methods = expand_methods(plugins, layer=args.layer, sweeps=sweeps)
    zm = model_from_args(args)
    check_output_dir(args.out)
    # --limit draws a seeded random subset: image folders are ordered by class, the first N are not a sample
    train_ds = random_subset(data_from_args(args, zm), args.limit)
    eval_spec = args.eval_data or _test_spec(args.data)
    test_ds = random_subset(data_from_args(args, zm, eval_spec), args.eval_limit)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                         weight_decay=args.weight_decay)
    # each run seeds torch's generator itself (its seed), so the model is built from that generator
    result = compare(lambda: model_from_args(args, seed=None), train_ds, test_ds, methods, args.layer, args.out,
                     config=config, seeds=list(range(args.seeds)), device=args.device,
                     rules_kw={"max_depth": args.max_depth} if args.max_depth else None,
                     log=None if args.json else lambda line: print(line, file=sys.stderr))
    emit(result.to_dict(), args.json, markdown_table(result) + f"\nwrote {args.out}/compare.md, compare.csv, "
                                                               f"compare.json, compare.png")
    return 0


def _test_spec(spec: str) -> str:
    if ":train" not in spec:
        raise InspectnetError(f"cannot derive test data from {spec!r}; pass --eval DATA")
    return spec.replace(":train", ":test", 1)
