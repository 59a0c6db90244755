"""``inspectnet probe MODEL DATA --layers L1,L2 --out DIR``: one streaming pass to a probe record."""

import argparse

from inspectnet.cli.options import (
    add_data_args,
    add_model_args,
    add_pass_args,
    data_from_args,
    emit,
    model_from_args,
    start_distributed,
    workers_from_args,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``probe`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("probe", help="record reduced activations, features and logits in one pass",
                       description="Stream DATA through MODEL once and write per-sample reduced activations "
                                   "of --layers, penultimate features, logits and labels to --out "
                                   "(resumable: re-run the same command after an interruption). Under "
                                   "torchrun the ranks share the batches.")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--layers", required=True, help="comma-separated layer names, globs or aliases")
    p.add_argument("--out", required=True, help="record folder")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--reducer", default="absmean", choices=["absmean", "mean", "max"],
                   help="per-filter reduction (absmean = spatial mean of |F|, EBP Eq. 1)")
    add_pass_args(p, shards=True)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet probe`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.probe.recorder import run_probe

    reports = start_distributed()
    zm = model_from_args(args)
    ds = data_from_args(args, zm)
    rec = run_probe(zm, ds, args.layers, args.out, batch_size=args.batch_size, limit=args.limit,
                    device=args.device, reducer=args.reducer, num_workers=workers_from_args(args),
                    shards=args.shards, shard_order=args.shard_order)
    if not reports:
        return 0
    layers = ", ".join(f"{e['name']} {e['shape']}" for e in rec.manifest["layers"])
    acc = f"; accuracy {rec.accuracy():.4f}" if (rec.labels >= 0).any() else ""
    emit(rec.manifest, args.json, f"probe record {args.out}: {len(rec)} samples; layers {layers}; "
                                  f"features {rec.manifest['features_dim']}{acc}")
    return 0
