"""``inspectnet explain MODEL IMAGE... [--classes top1|all|i,j] --out DIR``: exact class-evidence overlays."""

import argparse

from inspectnet.analysis.explain.config import EvidenceConfig
from inspectnet.cli.options import add_config_options, add_model_args, config_from_args, emit, model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``explain`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("explain", help="exact class-evidence maps of images, as overlays",
                       description="For a head that is global average pooling + linear, the evidence of class c "
                                   "at each position of the last map, E_c(h,w) = sum_j W[c,j] A_j(h,w) / (H W), "
                                   "sums exactly to logit_c - b_c. Writes one PNG per image and class (the crop "
                                   "the model sees | red for, blue against) and evidence.json into --out.")
    add_model_args(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DATA", help="image files, one folder, or a data spec")
    add_config_options(p, EvidenceConfig)
    p.add_argument("--out", required=True, help="folder for the overlays and evidence.json")
    p.add_argument("--json", action="store_true", help="print evidence.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet explain`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.cli.run import image_inputs
    from inspectnet.pipelines.explain import explain_images

    config = config_from_args(EvidenceConfig, args)  # bad values are refused before the model loads
    zm = model_from_args(args)
    images, _, names = image_inputs(args.inputs, config.limit, None)  # no labels needed
    doc = explain_images(zm, images, args.out, classes=config.classes, batch_size=config.batch_size, names=names)
    rows = [(img["image"], c) for img in doc["images"] for c in img["classes"]]
    worst = max(c["residual"] for _, c in rows)
    flagged = [f"{name} class {c['index']}: {c['status']}" for name, c in rows if c["status"] != "ok"]
    text = (f"wrote {len(rows)} evidence overlays and evidence.json to {args.out}; "
            f"largest |sum(E) + offset - logit| = {worst:.2e}"
            + ("".join(f"\nnote: {f} map" for f in flagged)))
    emit(doc, args.json, text)
    return 0
