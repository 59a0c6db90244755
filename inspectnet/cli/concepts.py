"""``inspectnet concepts MODEL DATA --layer L --method nmf|sae --k 16 --out DIR``: concepts in a layer's maps.

The Python equivalent::

    from inspectnet.analysis.concepts.discover import discover_concepts
    from inspectnet.analysis.concepts.pictures import write_concepts
    c = discover_concepts(zm, load_data("shapes?n=500"), "last_stage", method="nmf", k=16)
    write_concepts(c, "out/concepts", model=zm, data=data)
"""

import argparse
from pathlib import Path

from inspectnet.analysis.concepts import DEFAULT_ACTIVE, DEFAULT_K, DEFAULT_SEEDS, METHODS
from inspectnet.cli.options import add_model_args, emit, model_from_args, seed
from inspectnet.core.storage import check_output_dir


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``concepts`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("concepts", help="concepts discovered in a layer's activation maps (NMF or sparse autoencoder)",
                       description="Factorise the map cells of --layer over DATA into --k concepts (streaming, "
                                   "memory flat in the number of images), fit 3 seeds for stability, split each "
                                   "class logit exactly over the concepts when the head pools the layer "
                                   "(gradient x activation with a deletion check otherwise), name the concepts "
                                   "by mask IoU on concept data and by class purity on labelled data, and write "
                                   "DIR/concepts.json, basis.npz, concepts.png and crops.png.")
    add_model_args(p)
    p.add_argument("data", metavar="DATA", help="a data spec (shapes, photos, a labelled folder) or a concept folder "
                                                "(concepts.json, images/, masks/)")
    p.add_argument("--layer", default="last_stage", help="the layer whose maps are factorised (default last_stage: "
                                                         "the map the head pools)")
    p.add_argument("--method", choices=METHODS, default="nmf", help="nmf (non-negative maps) or sae (TopK autoencoder)")
    p.add_argument("--k", type=int, default=DEFAULT_K, help=f"number of concepts (default {DEFAULT_K})")
    p.add_argument("--active", type=int, default=DEFAULT_ACTIVE,
                   help=f"codes per cell kept by the autoencoder (default {DEFAULT_ACTIVE})")
    p.add_argument("--seed", type=seed, default=0, help="seed of the reported run; stability runs use the next ones")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help=f"runs fitted for stability (default {DEFAULT_SEEDS})")
    p.add_argument("--epochs", type=int, default=2, help="fitting passes over the data (default 2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--per-concept", type=int, default=6, help="top images per concept in the pictures")
    p.add_argument("--no-pictures", action="store_true", help="write the JSON and the basis only")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet concepts`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.analysis.concepts.discover import discover_concepts
    from inspectnet.analysis.concepts.pictures import write_concepts
    from inspectnet.data import load_data
    from inspectnet.data.concepts import CONFIG, load_concepts

    check_output_dir(args.out)
    zm = model_from_args(args)
    data = load_concepts(args.data) if (Path(args.data) / CONFIG).is_file() else load_data(args.data)
    result = discover_concepts(zm, data, args.layer, args.method, args.k, args.seed, seeds=args.seeds,
                               active=args.active, epochs=args.epochs, batch_size=args.batch_size, limit=args.limit,
                               device=args.device)
    write_concepts(result, args.out, model=None if args.no_pictures else zm, data=data, per_concept=args.per_concept,
                   device=args.device)
    summary = {"layer": result.layer, "method": result.method, "k": result.k, "runs": result.runs,
               "stability": result.stability.get("share"), "importance": result.importance["kind"],
               "naming": result.naming}
    r2 = ", ".join(f"{r['r2']:.3f}" for r in result.runs)
    lines = [f"{result.k} {result.method} concepts in {result.layer} of {result.model} on {result.data} "
             f"({result.num_images} images) -> {args.out}",
             f"  held-out R² per seed: {r2}; L0 {result.runs[0]['l0']:.2f}; dead {result.runs[0]['dead']}",
             f"  importance: {result.importance['kind']}"]
    if result.stability:
        lines.append(f"  stability: {result.stability['share']:.2f} of concepts matched at cosine ≥ "
                     f"{result.stability['threshold']}")
    if result.naming:
        lines.append(f"  labelled concepts recovered (IoU ≥ {result.naming['iou_threshold']}): "
                     f"{len(result.naming['recovered'])} vs {result.naming['random_recovered']} for draws of random "
                     f"directions (margin {result.naming['margin']:+.1f})")
    emit(summary, args.json, "\n".join(lines))
    return 0
