"""Fine-tuning plugins on mnist5k with ResNet18: accuracy, Hoyer sparsity, step-time overhead.

1. Train ResNet18 (1 channel, 28×28) on mnist5k:train for 3 epochs with `inspectnet train`'s
   library call (cached in --work).
2. From that checkpoint, fine-tune for the same short budget with no plugin (vanilla) and with
   each plugin; report mnist5k:test accuracy and the Hoyer sparsity (mean over test images of the
   Hoyer measure of A_i, the per-filter spatial mean of |F|) of layer4 and of the plugin's own layer,
   measured with activation plugins still in the forward pass.
3. Step time (forward + plugin losses + backward + SGD step, batch 64) of vanilla vs each plugin,
   interleaved in one run (:func:`benchmarks.harness.alternate`); median of the rounds; ratios to vanilla.

Run: python -m benchmarks finetune_plugins [--epochs 1 --steps 12] [--timing-only]
Writes benchmarks/results/finetune_plugins.{json,md} (finetune_plugins_timing.{json,md} with --timing-only).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks import harness
from inspectnet import load_data, load_model
from inspectnet.models.layers import eval_mode
from inspectnet.plugins import make_plugin
from inspectnet.probe.hooks import Probe
from inspectnet.training.finetune import PluginHooks, finetune
from inspectnet.training.hoyer_log import HoyerLog
from inspectnet.training.loop import TrainConfig, evaluate, train

PLUGINS = {
    "vanilla": [],
    "ebp": ["ebp:K=25,lam=1e-3,layer=layer4"],
    "ebp_lam3e-2": ["ebp:K=25,lam=3e-2,layer=layer4"],
    "kwta": ["kwta:k=0.2,layer=layer4"],
    "san": ["san:activation=max-pool-indices,m=2,layer=layer3"],
    "cgl": ["cgl:layers=all,groups=8"],
    "dutycycle": ["dutycycle:density=0.5,boost=1.0,layer=layer4"],
    "easr": ["easr:lam=1e-4,p=0.05,layer=layer4"],
    "sparseout": ["sparseout:p=0.5,q=1.0,layer=layer4"],
}
OWN_LAYER = {"san": "layer3"}
TIMED = ["vanilla", "ebp", "kwta", "san"]  # CGL's step time: python -m benchmarks cgl_step


def base_model(work: Path):
    folder = work / "resnet18_mnist5k"
    if not (folder / "model.safetensors").exists():
        torch.manual_seed(0)
        zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=28)
        train(zm, load_data("mnist5k:train", zm.transform()), folder, TrainConfig(epochs=3, batch_size=64),
              device="cpu")
    return str(folder)


def layer_hoyer(zm, data, layer: str, limit: int) -> float:
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(min(limit, len(data)))),
                                         batch_size=200)
    log = HoyerLog()
    with eval_mode(zm.model), torch.inference_mode(), Probe(zm.model, [layer]) as probe:
        for x, _ in loader:
            zm.model(x)
            log.add(probe.outputs[layer])
    return log.pop()["hoyer"]


def quality(base: str, work: Path, args) -> dict[str, dict]:
    rows = {}
    cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=args.lr, limit=args.limit, seed=0)
    for name, specs in PLUGINS.items():
        zm = load_model(base)
        train_ds = load_data("mnist5k:train", zm.transform())
        test_ds = load_data("mnist5k:test", zm.transform())
        out = work / f"ft_{name}"
        t0 = time.perf_counter()
        result = finetune(zm, train_ds, out, specs, cfg, device="cpu", keep_attached=True)
        seconds = time.perf_counter() - t0
        row = {"plugins": result.plugins, "accuracy": evaluate(zm, test_ds, device="cpu"),
               "hoyer_layer4": layer_hoyer(zm, test_ds, "layer4", args.eval_limit), "finetune_s": seconds}
        if name in OWN_LAYER:
            row[f"hoyer_{OWN_LAYER[name]}"] = layer_hoyer(zm, test_ds, OWN_LAYER[name], args.eval_limit)
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    base_zm = load_model(base)
    test_ds = load_data("mnist5k:test", base_zm.transform())
    rows["base (before fine-tuning)"] = {"plugins": [], "accuracy": evaluate(base_zm, test_ds, device="cpu"),
                                         "hoyer_layer4": layer_hoyer(base_zm, test_ds, "layer4", args.eval_limit)}
    return rows


def step_times(base: str, args) -> dict[str, dict]:
    """Seconds per training step for each plugin set (median, IQR, samples), rounds alternated."""
    setups = {}
    for name in TIMED:
        zm = load_model(base)
        plugins = [make_plugin(s).attach(zm.model, num_classes=10) for s in PLUGINS[name]]
        hooks = PluginHooks(plugins)
        opt = torch.optim.SGD(hooks.parameter_groups(zm.model, 1e-4), lr=1e-3, momentum=0.9)
        setups[name] = (zm, hooks, opt)
    ds = load_data("mnist5k:train", setups["vanilla"][0].transform())
    x = torch.stack([ds[i][0] for i in range(64)])
    y = torch.tensor([ds[i][1] for i in range(64)])
    ce = torch.nn.CrossEntropyLoss()

    def step(zm, hooks, opt) -> None:
        logits = zm.model(x)
        loss = ce(logits, y) + sum(hooks.loss(x, y, logits).values(), torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        opt.step()

    for zm, _, _ in setups.values():
        zm.model.train()
    return harness.alternate({n: (lambda s=s: step(*s)) for n, s in setups.items()}, args.steps, warmup=2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="fine-tuning samples (default: all 4000)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--eval-limit", type=int, default=1000)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--work", default="runs/bench/finetune")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timing-only", action="store_true",
                   help="only the step-time ratios, to results/finetune_plugins_timing.{json,md}")
    args = p.parse_args(argv)
    run = harness.start()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    base = base_model(work)
    steps = step_times(base, args)
    timing = {n: t["median_s"] for n, t in steps.items()}
    if args.timing_only:
        write_timing(timing, steps, args, run)
        return 0
    rows = quality(base, work, args)
    doc = {"setup": vars(args) | {"model": "resnet18 1x28x28, 3 epochs on mnist5k:train (sgd .05 cosine)",
                                  "device": "cpu"},
           "quality": rows, "step_seconds": timing, "step_timing": steps,
           "step_ratio": {n: timing[n] / timing["vanilla"] for n in timing}}
    lines = [f"Fine-tuning from one ResNet18 mnist5k checkpoint, {args.epochs} epoch(s) on "
             f"{args.limit or 4000} samples, "
             f"lr {args.lr}, CPU ({args.threads} thread). Hoyer: mean over {args.eval_limit} test images.", "",
             "| run | plugins | test accuracy | Hoyer layer4 | Hoyer own layer |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        own = next((f"{v:.3f} ({k[6:]})" for k, v in r.items() if k.startswith("hoyer_") and k != "hoyer_layer4"),
                   "")
        lines.append(f"| {name} | {', '.join(r['plugins']) or '-'} | {r['accuracy']:.4f} | "
                     f"{r['hoyer_layer4']:.3f} | {own} |")
    lines += ["", f"Step time (batch 64, median of {args.steps} interleaved rounds):", "",
              "| plugin | seconds/step | ratio to vanilla |", "|---|---|---|"]
    lines += [f"| {n} | {timing[n]:.4f} | {timing[n] / timing['vanilla']:.2f}x |" for n in timing]
    harness.write_results("finetune_plugins", doc, "\n".join(lines), run)
    print("\n".join(lines))
    return 0


def write_timing(timing: dict[str, float], steps: dict[str, dict], args, run: dict) -> None:
    doc = {"step_seconds": timing, "step_timing": steps,
           "step_ratio": {n: timing[n] / timing["vanilla"] for n in timing},
           "steps": args.steps, "threads": args.threads}
    lines = [f"Step time, ResNet18 1x28x28, batch 64, CPU {args.threads} thread, median of {args.steps} "
             "interleaved rounds:", "", "| plugin | seconds/step | IQR | ratio to vanilla |", "|---|---|---|---|"]
    lines += [f"| {n} | {timing[n]:.4f} | {steps[n]['iqr_s']:.4f} | {timing[n] / timing['vanilla']:.2f}x |"
              for n in timing]
    harness.write_results("finetune_plugins_timing", doc, "\n".join(lines), run)
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
