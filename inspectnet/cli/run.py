"""``inspectnet run model.onnx IMAGE...|FOLDER|DATA``: predict with ONNX Runtime only.

This module and what it imports must stay torch-free (images and folders are read with Pillow and
preprocessed with numpy from the file's own metadata; folder classes are mapped onto the model's by
:mod:`inspectnet.data.labels`). Only a built-in data spec such as ``mnist5k:test`` loads the
torch-based datasets.
"""

import argparse
import json
import sys
from pathlib import Path

from inspectnet.cli.options import add_class_map_arg, class_map_from_args
from inspectnet.data import load_data


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``run`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("run", help="predict with an exported ONNX file (ONNX Runtime, no torch)",
                       description="Top-k classes for IMAGE files, an image folder (ROOT/CLASS/IMAGE gives "
                                   "accuracy) or a built-in data spec, with the preprocessing and class names "
                                   "stored in MODEL.onnx by `inspectnet export`.")
    p.add_argument("model", help="ONNX file written by inspectnet export")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DATA", help="image files, one folder, or a data spec")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--device", default="auto", help="auto (CUDA provider when present), cpu, cuda")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its own choice)")
    p.add_argument("--evidence", action="store_true",
                   help="also write the class-evidence overlays of the exported top-k classes into --out "
                        "(files exported with --evidence)")
    p.add_argument("--out", help="folder for the --evidence overlays and evidence.json")
    add_class_map_arg(p)
    p.add_argument("--json", action="store_true",
                   help='output {"model", "providers", "accuracy", "predictions": [{"image", "top"}]}')
    p.add_argument("--per-image", action="store_true",
                   help="print every image's top-k (the default for image files; a folder or data spec prints "
                        "a summary)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet run`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.

    Raises:
        InspectnetError: ``--evidence`` without ``--out`` (or an input is refused on the way).
    """
    from inspectnet.core.errors import InspectnetError
    from inspectnet.runtime.classifier import OnnxClassifier

    if args.evidence and not args.out:
        raise InspectnetError("--evidence writes overlays: name their folder with --out DIR")
    clf = OnnxClassifier(args.model, device=args.device, threads=args.threads)
    images, labels, names = image_inputs(args.inputs, args.limit, clf.class_names, class_map_from_args(args))
    evidence = clf.explain(images, args.out, batch_size=args.batch_size, names=names) if args.evidence else None
    results = clf.predict(images, topk=args.topk, batch_size=args.batch_size, names=names)
    accuracy = None
    if labels is not None and len(labels) and min(labels) >= 0:
        accuracy = sum(r["top"][0]["index"] == y for r, y in zip(results, labels)) / len(labels)
    doc = {"model": str(args.model), "providers": clf.providers, "accuracy": accuracy, "predictions": results}
    if evidence is not None:
        doc["evidence"] = evidence
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif args.per_image or all(Path(i).is_file() for i in args.inputs):
        text = "\n".join(r["image"] + "\n" + "\n".join(f"  {t['prob']:.4f}  {t['index']:>4}  {t['label']}"
                                                       for t in r["top"]) for r in results)
        tail = f"\naccuracy {accuracy:.2%} on {len(results)} labelled images" if accuracy is not None else ""
        if evidence is not None:
            tail += f"\nwrote {sum(len(i['classes']) for i in evidence['images'])} evidence overlays and " \
                    f"evidence.json to {args.out}"
        sys.stdout.write(text + tail + "\n")
    else:
        sys.stdout.write(summary(doc, args.limit) + "\n")
    return 0


def summary(doc: dict, limit: int | None) -> str:
    """A few lines for many images: how many, accuracy where labelled, the most predicted classes.

    Args:
        doc: the predictions document (``model``, ``providers``, ``predictions``, ``accuracy`` when labelled).
        limit: the ``--limit`` given (named in the text), or None.

    Returns:
        The lines, joined.

    Examples:
        >>> print(summary({"model": "m.onnx", "providers": ["CPUExecutionProvider"], "accuracy": 0.5, "predictions": [
        ...     {"image": "a", "top": [{"label": "cat"}]}, {"image": "b", "top": [{"label": "cat"}]}]}, None))
        m.onnx (CPUExecutionProvider): 2 images
        accuracy 50.00% on 2 labelled images
        most predicted: cat 2
        (--per-image or --json for every image's top-k)
    """
    from collections import Counter

    preds = doc["predictions"]
    which = f" (the first {len(preds)}: --limit {limit})" if limit is not None else ""
    lines = [f"{doc['model']} ({', '.join(doc['providers'])}): {len(preds)} images{which}"]
    if doc["accuracy"] is not None:
        lines.append(f"accuracy {doc['accuracy']:.2%} on {len(preds)} labelled images")
    top = Counter(r["top"][0]["label"] for r in preds).most_common(5)
    lines += ["most predicted: " + ", ".join(f"{label} {n}" for label, n in top),
              "(--per-image or --json for every image's top-k)"]
    return "\n".join(lines)


def image_inputs(inputs: list[str], limit: int | None, model_classes: list[str] | None,
                 class_map: dict[str, int | str] | None = None) -> tuple[list, list[int] | None, list[str] | None]:
    """Image paths (or PIL images for a data spec), labels where the input has them, and item names.

    Labels are in the model's label space: a labelled folder's class sub-folders are mapped onto the
    model's class names (WordNet ids, names, ``--class-map``; see :mod:`inspectnet.data.labels`),
    and refused, naming them, where they cannot be. ``model_classes=None`` (callers that need no
    labels, such as ``inspectnet explain``) maps nothing and returns no labels for a folder.

    Args:
        inputs: image files, one folder, or one data spec.
        limit: the first ``limit`` images only.
        model_classes: the model's class names, or None.
        class_map: data class -> model class, for classes no name or id matches.

    Returns:
        ``(images, labels or None, names or None)``.

    Raises:
        InspectnetError: ``limit`` is below 1, or a folder's classes cannot be mapped onto the model's.
    """
    from inspectnet.core.errors import InspectnetError
    from inspectnet.data.labels import align_classes
    from inspectnet.runtime.classifier import collect_images

    if limit is not None and limit < 1:
        raise InspectnetError(f"--limit must be at least 1, got {limit}")
    if len(inputs) == 1 and not Path(inputs[0]).exists() and not Path(inputs[0]).suffix:
        # built-in sources live in the torch-based datasets
        ds = load_data(inputs[0], model_classes=model_classes, class_map=class_map)
        n = len(ds) if limit is None else min(limit, len(ds))
        images = [ds.image(i) for i in range(n)]
        return images, [int(y) for y in ds.labels[:n]], [ds.name(i) for i in range(n)]
    files, labels, classes = collect_images(inputs)
    if model_classes is None:
        labels = None
    elif labels is not None:
        mapping = align_classes(classes, model_classes, class_map=class_map, what=f"folder {inputs[0]}")
        labels = mapping.apply(labels).tolist()
    if limit is not None:
        files, labels = files[:limit], (labels[:limit] if labels is not None else None)
    return files, labels, None
