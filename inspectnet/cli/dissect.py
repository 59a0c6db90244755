"""``inspectnet dissect MODEL CONCEPT_DATA --layers L1,L2 --out DIR``: Network Dissection report."""

import argparse

from inspectnet.analysis.dissect.config import DissectConfig
from inspectnet.cli.options import (
    add_config_options,
    add_model_args,
    add_pass_args,
    config_from_args,
    emit,
    model_from_args,
    start_distributed,
    workers_from_args,
)
from inspectnet.core.storage import check_output_dir


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``dissect`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("dissect", help="which units detect which concepts (Network Dissection)",
                       description="Threshold every unit of --layers at its top --quantile activation level "
                                   "over the concept data, score its IoU with every concept mask over the "
                                   "whole dataset, and write DIR/dissection.json, dissection.csv, iou.npz "
                                   "and one HTML page per layer.")
    add_model_args(p)
    p.add_argument("concepts", metavar="CONCEPT_DATA",
                   help="shapes[:train|:test][?n=..&seed=..] or a concept folder (concepts.json, images/, "
                        "masks/ or segmentations/)")
    p.add_argument("--layers", required=True, help="comma-separated layer names, globs or aliases")
    p.add_argument("--out", required=True, help="output folder")
    add_config_options(p, DissectConfig)
    p.add_argument("--resize-masks", action="store_true",
                   help="resize masks whose size differs from their image (nearest, with a warning) "
                        "instead of refusing them")
    p.add_argument("--no-html", action="store_true", help="write JSON, CSV and IoU matrices only")
    p.add_argument("--json", action="store_true", help="print the per-layer summary as JSON")
    add_pass_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet dissect`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.analysis.dissect.dissection import dissect
    from inspectnet.analysis.dissect.pages import write_dissection
    from inspectnet.data.concepts import load_concepts

    config = config_from_args(DissectConfig, args)  # bad values are refused before the model loads
    check_output_dir(args.out)
    reports = start_distributed()
    zm = model_from_args(args)
    data = load_concepts(args.concepts, resize_masks=args.resize_masks)
    result = dissect(zm, data, args.layers, quantile=config.quantile, iou_threshold=config.iou_threshold,
                     batch_size=config.batch_size, device=config.device, limit=config.limit, passes=config.passes,
                     num_workers=workers_from_args(args), shard_order=args.shard_order)
    if not reports:  # every rank holds the same result; rank 0 writes it
        return 0
    write_dissection(result, args.out, model=None if args.no_html else zm, data=data,
                     images_per_unit=config.images_per_unit, max_units=config.max_units, device=config.device)
    summary = {layer: {k: info[k] for k in ("num_units", "detectors", "unique_detectors", "unique_by_category")}
               for layer, info in result.layers.items()}
    lines = [f"dissection of {result.model} on {result.data} ({result.num_images} images) -> {args.out}"]
    for layer, s in summary.items():
        cats = ", ".join(f"{c} {n}" for c, n in s["unique_by_category"].items())
        lines.append(f"  {layer}: {s['detectors']}/{s['num_units']} detectors, "
                     f"{s['unique_detectors']} unique concepts ({cats})")
    emit(summary, args.json, "\n".join(lines))
    return 0
