"""``inspectnet audit MODEL DATA --out DIR [--eval DATA] [--layers ...] [--layer L] [--concepts DATA] [--export]``.

Runs probe → decomposition → rules → sparsity → linear probes → attributions → explanations →
dissection → export → card, reusing the stages already computed in DIR, and writes DIR/card.json, README.md
and card.html. The work is done by :func:`inspectnet.pipelines.audit.run_audit`.
"""

import argparse
import shlex

from inspectnet.cli.options import (
    add_class_map_arg,
    add_model_args,
    add_pass_args,
    class_map_from_args,
    emit,
    model_ref_from_args,
    start_distributed,
    workers_from_args,
)
from inspectnet.core.errors import IncompleteResult

_PARSER: argparse.ArgumentParser | None = None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="audit a model into an interpretability model card (JSON, Markdown, HTML)",
                       description="Probe MODEL on DATA once, then influential features + decomposed head, rules, "
                                   "sparsity, linear probes, attributions (and dissection / export when asked), "
                                   "and write a model card into --out. Re-running reuses finished stages.")
    add_model_args(p)
    p.add_argument("data", help="labelled data the analyses are fitted on (folder, mnist5k:train, digits, ...)")
    p.add_argument("--out", required=True, help="audit folder (cache + card); refused if it holds another model's")
    p.add_argument("--eval", dest="eval_data", help="labelled data to evaluate on (default: DATA, in-sample)")
    add_class_map_arg(p)
    p.add_argument("--layers", help="comma-separated layers to probe (default: the model's stage outputs)")
    p.add_argument("--layer", help="the layer that rules, receptive fields and dissection analyse (default: the "
                                   "last probed layer; probed if not in --layers)")
    p.add_argument("--limit", type=int, default=512, help="samples of DATA to use (default 512)")
    p.add_argument("--eval-limit", type=int, help="samples of --eval data to use")
    p.add_argument("--k1", type=int, default=5, help="top features per sample (Algorithm 1)")
    p.add_argument("--k2", type=int, default=5, help="influential features per class")
    p.add_argument("--retrain-epochs", type=int, default=0, help="retrain the decomposed head N epochs")
    p.add_argument("--concepts", help="concept data for network dissection (shapes, or a concept folder)")
    p.add_argument("--concept-limit", type=int, default=200, help="concept images to dissect")
    p.add_argument("--discover-concepts", type=int, default=0, metavar="K",
                   help="discover K concepts in the map the head pools, with their exact class importance (0: off)")
    p.add_argument("--concept-method", choices=("nmf", "sae"), default="nmf",
                   help="how concepts are discovered: nmf or a TopK sparse autoencoder (default nmf)")
    p.add_argument("--export", action="store_true", help="export the decomposed model to ONNX and verify it")
    p.add_argument("--export-max-drop", type=float, default=0.05,
                   help="export the dense model instead when the decomposed one's accuracy is more than this "
                        "below it (default 0.05 = 5 points)")
    p.add_argument("--images", type=int, default=6, help="images to explain with IG / Grad-CAM")
    p.add_argument("--ig-steps", type=int, default=32, help="Integrated Gradients steps")
    p.add_argument("--top-units", type=int, default=6, help="units shown with their receptive fields")
    p.add_argument("--explain-images", type=int, default=0,
                   help="images on which every explanation's faithfulness is measured (default 0 skips the "
                        "stage: it costs ~28 forward passes per image, method and model form; 64 is a good size)")
    p.add_argument("--deletion-steps", type=int, default=10, help="steps of the deletion and insertion curves")
    p.add_argument("--baseline", choices=("blur", "mean"), default="blur",
                   help="what deleted pixels become: a blurred image or its mean colour")
    p.add_argument("--sanity-images", type=int, default=8,
                   help="images for the cascading-randomisation sanity check (0 skips it)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print card.json")
    add_pass_args(p)
    p.set_defaults(func=run)
    global _PARSER
    _PARSER = p


def command_line(args: argparse.Namespace) -> str:
    """The canonical command that reproduces this audit (options that differ from their defaults)."""
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
        parts += [flag] if value is True else [flag, str(value)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from inspectnet.models.provenance import made_by
    from inspectnet.pipelines.audit import AuditConfig, run_audit

    reports = start_distributed()
    layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
    config = AuditConfig(data=args.data, eval_data=args.eval_data, layers=layers, layer=args.layer, limit=args.limit,
                         eval_limit=args.eval_limit, k1=args.k1, k2=args.k2, retrain_epochs=args.retrain_epochs,
                         concepts=args.concepts, concept_limit=args.concept_limit, concept_k=args.discover_concepts,
                         concept_method=args.concept_method, export=args.export,
                         export_max_drop=args.export_max_drop,
                         attribution_images=args.images, ig_steps=args.ig_steps,
                         top_units=args.top_units, explain_images=args.explain_images,
                         deletion_steps=args.deletion_steps, baseline=args.baseline, sanity_images=args.sanity_images,
                         batch_size=args.batch_size, device=args.device,
                         seed=args.seed, class_map=class_map_from_args(args), command=command_line(args))
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
