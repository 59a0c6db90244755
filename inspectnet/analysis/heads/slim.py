"""Slimming a decomposed model: remove the penultimate channels that no class uses, exactly.

A channel outside ∪ S_c only feeds the head, where every class multiplies it by zero, so the layer
producing it can drop it without changing any logit. The surgery itself (which producers are
supported and how their rows are removed) is :func:`inspectnet.models.surgery.apply_slimming`, so a
saved slimmed model loads without this module; here the result is verified against the decomposed
model and measured (MACs, parameters, latency).

Anything else raises an :class:`InspectnetError` that says why; the decomposed model stays as it is.

>>> szm, report = slim_model(dzm)              # doctest: +SKIP
>>> report["logits_max_abs_diff"] < 1e-4       # doctest: +SKIP
True
"""

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from inspectnet.core.errors import InspectnetError
from inspectnet.core.timing import median_seconds
from inspectnet.models.heads import DecomposedLinear
from inspectnet.models.layers import eval_mode
from inspectnet.models.surgery import SLIMMED, apply_slimming, slimming_method
from inspectnet.models.zoo import ZooModel


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (Conv2d and Linear layers).

    A decomposed head counts one MAC per supported (class, feature) pair.

    Args:
        model: the network.
        input_size: (C, H, W) of the input.

    Returns:
        The count.

    Examples:
        >>> count_macs(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (1, 2, 2))
        8
    """
    total = 0

    def hook(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, DecomposedLinear):
            total += int(m.mask.sum()) * (out.numel() // out.shape[-1])
        elif isinstance(m, nn.Linear):
            total += m.in_features * out.numel()
        elif isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with eval_mode(model), torch.inference_mode():
            model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return total


def _latency(model: nn.Module, x: torch.Tensor, reps: int) -> float:
    with eval_mode(model), torch.inference_mode():
        return median_seconds(lambda: model(x), min_reps=reps, max_reps=reps)


def slim_model(dzm: ZooModel, *, check_batch: torch.Tensor | None = None, atol: float = 1e-4,
               latency_reps: int = 10, batch: int = 8) -> tuple[ZooModel, dict[str, Any]]:
    """Slim a decomposed model to the union of used channels.

    Logits of the slimmed model are checked against the decomposed model's on ``check_batch``
    (random N(0, 1) inputs when not given); a difference above ``atol`` × max(1, |logit|) is refused.

    Args:
        dzm: a model with a decomposed head.
        check_batch: inputs the logits are compared on.
        atol: the tolerance of the comparison.
        latency_reps: timed forward passes per model.
        batch: the batch of the latency measurement.

    Returns:
        ``(slimmed model, report)``; the report gives the method, channels kept, logit difference, top-1
        agreement, MACs, parameters and latencies before and after.

    Raises:
        InspectnetError: the head is not decomposed, no exact slimming applies, or the logits changed.
    """
    head = dzm.model.get_submodule(dzm.head_name)
    if not isinstance(head, DecomposedLinear):
        raise InspectnetError(f"slimming needs a decomposed model (head {dzm.head_name!r} is "
                              f"{type(head).__name__}); run decompose first")
    method = slimming_method(dzm.model, dzm.head_name)
    keep = head.union()
    model = apply_slimming(copy.deepcopy(dzm.model), dzm.head_name, method, keep)
    mod = {"kind": SLIMMED, "method": method, "head_name": dzm.head_name, "keep": keep}
    szm = dataclasses.replace(dzm, model=model.eval(), data_config=dict(dzm.data_config),
                              class_names=list(dzm.class_names), modifications=[*dzm.modifications, mod])
    size = tuple(dzm.data_config["input_size"])
    x = check_batch if check_batch is not None else torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))
    with eval_mode(dzm.model), eval_mode(model), torch.inference_mode():
        a, b = dzm.model(x), model(x)
    diff = float((a - b).abs().max())
    scale = max(1.0, float(a.abs().max()))
    if diff > atol * scale:
        raise InspectnetError(f"slimming {dzm.spec} ({method}) changed the logits by {diff:.3g} (> {atol} x "
                              f"{scale:.3g}); keeping the unslimmed decomposed model")
    macs_before, macs_after = count_macs(dzm.model, size), count_macs(model, size)
    params_before = sum(p.numel() for p in dzm.model.parameters())
    params_after = sum(p.numel() for p in model.parameters())
    t_before = _latency(dzm.model, x, latency_reps)
    t_after = _latency(model, x, latency_reps)
    return szm, {
        "method": method, "kept_channels": len(keep), "feature_dim": head.in_features,
        "logits_max_abs_diff": diff, "top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
        "macs_before": macs_before, "macs_after": macs_after, "macs_saved": macs_before - macs_after,
        "params_before": params_before, "params_after": params_after, "params_saved": params_before - params_after,
        "latency_before_s": t_before, "latency_after_s": t_after, "latency_ratio": t_after / t_before,
        "latency_batch": len(x),
    }
