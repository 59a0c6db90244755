"""``inspectnet decompose --fit TRAIN_RECORD --eval TEST_RECORD --model MODEL --out DIR``.

Fits the influential features (Algorithm 1), evaluates the decomposed head, runs the noise
ablation, optionally retrains the head and slims the model, and writes ``DIR/decomposition.json``
plus the decomposed (and slimmed) model folders. The work is done by
:func:`inspectnet.pipelines.decompose.run_decomposition`.
"""

import argparse

from inspectnet.cli.options import add_class_map_arg, add_model_args, class_map_from_args, emit, model_from_args, seed
from inspectnet.core.storage import check_output_dir
from inspectnet.core.tables import format_value


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``decompose`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("decompose", help="influential features per class, decomposed (slimmed) head",
                       description="Fit each class's influential features on a train probe record, decompose "
                                   "the model's head to them, evaluate on an eval record and save the model.")
    p.add_argument("--fit", required=True, help="probe record of the train split (labelled)")
    p.add_argument("--eval", dest="eval_record", required=True, help="probe record to evaluate on (labelled)")
    p.add_argument("--k1", type=int, default=5, help="top features per sample (Algorithm 1)")
    p.add_argument("--k2", type=int, default=5, help="influential features per class (k2 <= k1)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", help="the model the records were probed with (needed for the head's weights)")
    add_model_args(p, spec=False)
    p.add_argument("--layer", default="pre_logits",
                   help="fit at this probed layer (influential filters); only pre_logits decomposes the head")
    p.add_argument("--score", default="magnitude", choices=["magnitude", "contribution"],
                   help="rank a sample's features by |f_j| (the paper) or by |W[c,j] f_j| for its class c")
    p.add_argument("--retrain-epochs", type=int, default=0, help="fine-tune the decomposed head N epochs")
    p.add_argument("--retrain-lr", type=float, default=0.1, help="SGD (momentum 0.9) learning rate")
    p.add_argument("--slim", action="store_true", help="remove penultimate channels no class uses")
    p.add_argument("--sweep-k", type=_ints, help="comma-separated k values: sweep table + plot over k1, k2")
    p.add_argument("--data", help="labelled image data to evaluate the saved model on end to end")
    p.add_argument("--limit", type=int, help="use only the first N samples of --data")
    add_class_map_arg(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=seed, default=0, help="seed of the noise ablation and retraining")
    p.add_argument("--json", action="store_true", help="print decomposition.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet decompose`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.
    """
    from inspectnet.pipelines.decompose import run_decomposition

    check_output_dir(args.out)
    zm = model_from_args(args) if args.model else None
    doc = run_decomposition(args.fit, args.eval_record, args.out, zm=zm, k1=args.k1, k2=args.k2,
                            layer=args.layer, retrain_epochs=args.retrain_epochs, retrain_lr=args.retrain_lr,
                            slim=args.slim, sweep_k=args.sweep_k, data=args.data, limit=args.limit,
                            class_map=class_map_from_args(args),
                            device=args.device, seed=args.seed, score=args.score)
    if "accuracy_full" not in doc:
        emit(doc, args.json, f"influential filters of {args.layer} written to {args.out}/influence.json")
        return 0
    lines = [f"k1={doc['k1']} k2={doc['k2']}: A_f={doc['accuracy_full']:.4f} A_d={doc['accuracy_decomposed']:.4f} "
             f"rA={format_value(doc['rA'])} agreement={doc['agreement']:.4f}"
             + (f" ({doc['rA_undefined']})" if "rA_undefined" in doc else ""),
             f"union {doc['union_size']}/{doc['feature_dim']} features; head MACs {doc['head_macs_full']} -> "
             f"{doc['head_macs_decomposed']}",
             f"noise: influential {doc['noise_ablation']['influential']:.4f}, "
             f"non-influential {doc['noise_ablation']['non_influential']:.4f} (full head)"]
    if "accuracy_retrained" in doc:
        lines.append(f"retrained head ({args.retrain_epochs} epochs): {doc['accuracy_retrained']:.4f}; "
                     f"{doc['model_choice']}")
    if "slim" in doc:
        s = doc["slim"]
        lines.append(f"slim: {s['error']}" if "error" in s else
                     f"slimmed ({s['method']}): {s['kept_channels']}/{s['feature_dim']} channels, MACs "
                     f"{s['macs_before']} -> {s['macs_after']}, logits max diff {s['logits_max_abs_diff']:.2e}")
    lines.append(f"wrote {args.out}/decomposition.json")
    emit(doc, args.json, "\n".join(lines))
    return 0
