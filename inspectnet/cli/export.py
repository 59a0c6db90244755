"""``inspectnet export MODEL --out model.onnx``: verified ONNX export, optionally int8."""

import argparse
from collections.abc import Sequence

from inspectnet.cli.options import add_config_options, add_model_args, config_from_args, emit, model_from_args
from inspectnet.export.options import ExportOptions


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("export", help="export to a verified, self-describing ONNX file (optionally int8)",
                       description="Export MODEL to ONNX (dynamic batch, input 'input', output 'logits', "
                                   "preprocessing and class names in the file's metadata). The export is "
                                   "checked with onnx.checker and ONNX Runtime vs PyTorch at batch 1 and 8 "
                                   "before it is written; the report goes to <out stem>.export.json.")
    add_model_args(p)
    p.add_argument("--out", required=True, help="output .onnx file (its folder is created)")
    add_config_options(p, ExportOptions)
    p.add_argument("--evidence", type=int, nargs="?", const=1, metavar="K",
                   help="add the outputs 'evidence' (B, K, H, W): exact class-evidence maps of the top-K classes "
                        "(default K=1), and 'evidence_classes' (B, K); for token transformers (ViT, DeiT, BEiT) the "
                        "maps are the patch tokens' direct effects and 'remainder' (B, K) holds the input-dependent "
                        "rest of each logit; checked against torch by the gate")
    p.add_argument("--concepts", metavar="DIR",
                   help="add the output 'concepts' (B, K, h, w): the codes, at every position of the map the head "
                        "pools, of the concepts `inspectnet concepts` discovered there and wrote to DIR; checked "
                        "against torch by the gate")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet export`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.

    Raises:
        InspectnetError: ``--int8`` without ``--calibration`` data (or an input is refused on the way).
    """
    from inspectnet.core.errors import InspectnetError
    from inspectnet.export.onnx import calibration_inputs, export_onnx

    config_from_args(ExportOptions, args, evidence=args.evidence)  # bad values are refused before the model loads
    if args.int8 and not args.calibration:
        raise InspectnetError("--int8 needs --calibration DATA: real images (folder or data spec) that set "
                              "the int8 activation ranges")
    zm = model_from_args(args)
    calibration = evaluation = None
    if args.int8:
        # calibration labels matter only where the calibration images also measure accuracy
        calibration, labels = calibration_inputs(zm, args.calibration, limit=args.calibration_limit,
                                                 skip_bad=args.skip_bad, labelled=not args.eval_data)
        warn_uncovered_classes(labels, len(zm.class_names))
        evaluation = (calibration_inputs(zm, args.eval_data, limit=args.eval_limit, skip_bad=args.skip_bad)
                      if args.eval_data else (calibration, labels))
    res = export_onnx(zm, args.out, opset=args.opset, exporter=args.exporter, head_only=args.head_only,
                      force=args.force, int8=args.int8, calibration=calibration, evaluation=evaluation,
                      latency=not args.no_latency, threads=args.threads, device=args.device,
                      int8_keep_fp32=[n for n in args.int8_keep_fp32.split(",") if n],
                      evidence=args.evidence, int8_agreement=args.int8_agreement, int8_max_fp32=args.int8_max_fp32,
                      concepts=args.concepts, int8_weight_bits=args.int8_weight_bits)
    emit(res.to_dict(), args.json, summary(res.to_dict()))
    return 0


def warn_uncovered_classes(labels: "Sequence[int]", num_classes: int) -> None:
    """Warn when calibration data leaves some of the model's classes without a sample.

    Judged by its labels (in the model's label space) when labelled, else because it has fewer samples
    than classes.

    Args:
        labels: the calibration samples' labels (-1 = unlabelled).
        num_classes: the model's classes.

    Examples:
        >>> warn_uncovered_classes([0, 1, 1], 2)   # every class has a sample: silent
    """
    import warnings

    import numpy as np

    labels = np.asarray(labels)
    known = labels[labels >= 0]
    covered = len(np.unique(known)) if known.size else min(len(labels), num_classes)
    if covered < num_classes:
        at_most = "" if known.size else "at most "
        warnings.warn(f"--calibration covers {at_most}{covered} of the model's {num_classes} classes "
                      f"({len(labels)} samples); "
                      "int8 ranges fitted to a subset may clip the others: raise --calibration-limit or add images",
                      stacklevel=2)


def summary(r: dict) -> str:
    """Human-readable lines of an export report.

    Args:
        r: the report :func:`~inspectnet.export.onnx.export_onnx` returned.

    Returns:
        The lines, joined.
    """
    p = r["parity"]
    lines = [f"wrote {r['path']} ({r['size_bytes'] / 1e6:.1f} MB, opset {r['opset']}, {r['exporter']} exporter, "
             f"input {r['input_name']} {r['input_shape']})",
             f"gate passed: max |onnx - torch| {p['max_abs_diff']:.2e} (rel {p['max_rel_diff']:.2e}), "
             f"top-1 agreement {p['top1_agreement']:.1%}; providers {', '.join(r['providers'])}"]
    if r.get("exporter_fallback"):
        lines.append(f"written by the {r['exporter']} exporter because {r['exporter_fallback']}")
    if r.get("evidence"):
        plus = " + remainder" if r["evidence"].get("form") == "tokens" else ""
        lines.append(f"evidence output ({r['evidence'].get('form', 'pooled')}): top-{r['evidence']['k']} maps of "
                     f"{r['evidence']['grid']}, max |onnx - torch| {p['evidence_max_abs_diff']:.2e}, "
                     f"|sum(E){plus} + offset - logit| {p['evidence_sum_residual']:.2e}")
    if r.get("concepts"):
        c = r["concepts"]
        lines.append(f"concepts output: {c['k']} {c['method']} concepts of {c['layer']} on a {c['grid']} grid, max "
                     f"|onnx - torch| {p['concepts_max_abs_diff']:.2e}")
    lat = r["latency_ms"]
    for b in lat.get("torch_eager", {}):
        row = ", ".join(f"{k} {v[b]:.2f} ms" for k, v in lat.items())
        lines.append(f"latency batch {b} ({r['threads']} thread(s) each): {row}")
    if r.get("int8"):
        q = r["int8"]
        acc = (f", accuracy fp32 {q['accuracy_fp32']:.1%} / int8 {q['accuracy_int8']:.1%}"
               if "accuracy_int8" in q else "")
        lines.append(f"int8 {q['path']} ({q['size_bytes'] / 1e6:.1f} MB): top-1 agreement with fp32 "
                     f"{q['top1_agreement_with_fp32']:.1%} on {q['eval_samples']} samples of the {q['eval_on']}{acc}")
        if q.get("top1_agreement_fp32_stable") is not None:
            change = (f"; accuracy change {q['accuracy_change_points']:+.2f} points"
                      if "accuracy_change_points" in q else "")
            lines.append(f"int8 agreement on the {q['fp32_stable_samples']} inputs whose fp32 top-1 is stable under "
                         f"one grey level: {q['top1_agreement_fp32_stable']:.1%}{change}")
        if q.get("mixed_precision"):
            m = q["mixed_precision"]
            lines.append(f"mixed precision: {len(m['kept'])} node(s) kept in fp32 for a target of {m['target']:.1%} "
                         f"on the {m['stable']} fp32-stable calibration inputs: reached {m['agreement']:.1%}"
                         + ("" if m["target_met"] else " (target not met: raise --int8-max-fp32 or add calibration "
                                                        "images)"))
        if q.get("kept_fp32"):
            lines.append(f"int8 nodes kept in fp32: {', '.join(f'{n} ({why})' for n, why in q['kept_fp32'].items())}")
    return "\n".join(lines)
