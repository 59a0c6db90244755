"""Export a model with its evidence maps, then serve predictions and maps with ONNX Runtime alone.

    python examples/export_and_serve.py export MODEL --calibration DATA --out model.onnx [--evidence 1] [--int8]
    python examples/export_and_serve.py serve model.onnx IMAGE... --out overlays/

``export`` needs PyTorch: it writes the ONNX file with a second output, ``evidence``, the exact
class-evidence maps of the top-k classes, after checking the file against PyTorch (top-1 and logits).
``serve`` needs only ONNX Runtime, numpy and Pillow (``pip install inspectnet`` without torch would do):
it prints each image's top classes and writes one overlay per image and class into ``--out``. It
reports at the end whether torch was imported, so a deployment can check that it never is.
"""

import argparse
import sys
import time


def export(args: argparse.Namespace):
    """Write ``args.out`` from ``args.model``, int8-quantized too with ``--int8``; returns the export report."""
    from inspectnet import export_onnx, load_model
    from inspectnet.export.onnx import calibration_inputs

    model = load_model(args.model, input_size=args.input_size)
    calibration, _ = calibration_inputs(model, args.calibration, limit=args.calibration_limit)
    result = export_onnx(model, args.out, evidence=args.evidence, int8=args.int8, calibration=calibration)
    parity = result.parity
    print(f"wrote {args.out}; against PyTorch: top-1 agreement {parity['top1_agreement']:.1%}, "
          f"largest logit difference {parity['max_abs_diff']:.1e}")
    return result


def serve(args: argparse.Namespace) -> list[dict]:
    """Top classes of ``args.images`` and their evidence overlays in ``args.out``, with ONNX Runtime only."""
    from inspectnet.runtime.classifier import OnnxClassifier

    start = time.perf_counter()
    classifier = OnnxClassifier(args.model)
    predictions = classifier.predict(args.images, topk=args.topk)
    for item in predictions:
        top = ", ".join(f"{t['label']} {t['prob']:.2f}" for t in item["top"])
        print(f"{item['image']}: {top}")
    if classifier.evidence_info is not None:
        overlays = classifier.explain(args.images, args.out)
        print(f"evidence overlays of {len(overlays['images'])} images in {args.out}")
    print(f"served {len(predictions)} images in {time.perf_counter() - start:.2f} s; "
          f"torch imported: {'torch' in sys.modules}")
    return predictions


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    e = commands.add_parser("export", help="write the ONNX file (needs PyTorch)")
    e.add_argument("model", help="model spec or folder, e.g. runs/mnist_r18 or shipped:efficientnet_lite0")
    e.add_argument("--calibration", required=True, help="data spec or folder of images the model will see")
    e.add_argument("--calibration-limit", type=int, default=256)
    e.add_argument("--input-size", type=int)
    e.add_argument("--evidence", type=int, default=1, help="maps of the top-k classes (default %(default)s)")
    e.add_argument("--int8", action="store_true", help="also write <stem>.int8.onnx")
    e.add_argument("--out", required=True)
    s = commands.add_parser("serve", help="predict and explain with ONNX Runtime only")
    s.add_argument("model", help="an ONNX file written by export")
    s.add_argument("images", nargs="+")
    s.add_argument("--topk", type=int, default=3)
    s.add_argument("--out", default="overlays")
    args = parser.parse_args(argv)
    return export(args) if args.command == "export" else serve(args)


if __name__ == "__main__":
    main()
