"""Slimming a decomposed model: remove the penultimate channels that no class uses, exactly.

A channel outside ∪ S_c only feeds the head, where every class multiplies it by zero, so the layer
producing it can drop it without changing any logit. Supported producers (DESIGN.md §7):

* ``efficientnet``: timm EfficientNet/MobileNet-style ``conv_head`` + ``bn2`` (rows removed);
* ``resnet``: the last block of ``layer4`` (its output conv + BN rows removed, the shortcut
  gathered to the kept channels, or its downsample conv + BN rows removed);
* ``linear``: a plain ``nn.Linear`` feeding the head through element-wise modules in a Sequential.

Anything else raises an :class:`InspectnetError` that says why; the decomposed model stays as it is.

>>> szm, report = slim_model(dzm)              # doctest: +SKIP
>>> report["logits_max_abs_diff"] < 1e-4       # doctest: +SKIP
True
"""

import copy
import time
from typing import Any

import torch
from torch import nn

from inspectnet.analysis.heads.decompose import ChannelGather, DecomposedLinear
from inspectnet.core.errors import InspectnetError
from inspectnet.models.layers import eval_mode
from inspectnet.models.zoo import ZooModel, register_modifier, set_submodule

MODIFIER = "slimmed"
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Hardswish,
                nn.Dropout, nn.Identity, nn.BatchNorm1d)


def _keep_rows(module: nn.Module, keep: torch.Tensor, names: tuple[str, ...]) -> None:
    """Replace the named parameters/buffers of ``module`` by their rows ``keep`` (dim 0)."""
    for name in names:
        t = getattr(module, name, None)
        if t is None:
            continue
        new = t.detach().index_select(0, keep.to(t.device)).clone()
        if isinstance(t, nn.Parameter):
            setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
        else:
            setattr(module, name, new)


def _slim_conv(conv: nn.Conv2d, keep: torch.Tensor) -> None:
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise InspectnetError(f"cannot slim {type(conv).__name__} (groups={getattr(conv, 'groups', '?')}); "
                              f"expected a dense Conv2d")
    _keep_rows(conv, keep, ("weight", "bias"))
    conv.out_channels = len(keep)


def _slim_norm(bn: nn.Module, keep: torch.Tensor) -> None:
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise InspectnetError(f"cannot slim {type(bn).__name__}; expected a BatchNorm after the conv")
    _keep_rows(bn, keep, ("weight", "bias", "running_mean", "running_var"))
    bn.num_features = len(keep)


def _slim_linear_rows(lin: nn.Linear, keep: torch.Tensor) -> None:
    _keep_rows(lin, keep, ("weight", "bias"))
    lin.out_features = len(keep)


def detect_method(model: nn.Module, head_name: str) -> str:
    """Which exact slimming applies to ``model``, or an error explaining why none does."""
    if isinstance(getattr(model, "conv_head", None), nn.Conv2d) and hasattr(model, "bn2"):
        return "efficientnet"
    stage = getattr(model, "layer4", None)
    if isinstance(stage, nn.Sequential) and len(stage) and head_name == "fc":
        block = stage[-1]
        if getattr(block, "se", None) is not None:
            raise InspectnetError("cannot slim exactly: the last ResNet block has squeeze-excitation, which mixes "
                                  "channels after the output projection; keeping the unslimmed decomposed model")
        if hasattr(block, "conv3") or hasattr(block, "conv2"):
            return "resnet"
    if _linear_producer(model, head_name) is not None:
        return "linear"
    raise InspectnetError(f"cannot slim {type(model).__name__} exactly: no known layer produces the head's "
                          f"input channels alone (supported: EfficientNet conv_head/bn2, ResNet layer4, a "
                          f"Linear before the head in a Sequential); keeping the unslimmed decomposed model")


def _linear_producer(model: nn.Module, head_name: str) -> tuple[nn.Linear, list[nn.Module]] | None:
    """The Linear feeding the head through element-wise modules of the same Sequential, if any."""
    parent_name, _, leaf = head_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return None
    children = list(parent.children())
    pos = [i for i, (n, _) in enumerate(parent.named_children()) if n == leaf][0]
    between: list[nn.Module] = []
    for m in reversed(children[:pos]):
        if isinstance(m, nn.Linear):
            return m, between
        if not isinstance(m, _ELEMENTWISE):
            return None
        between.append(m)
    return None


def apply_slimming(model: nn.Module, head_name: str, method: str, keep: list[int]) -> nn.Module:
    """Structurally remove every penultimate channel not in ``keep`` (used when slimming and on load)."""
    idx = torch.tensor(keep, dtype=torch.int64)
    if method == "efficientnet":
        _slim_conv(model.conv_head, idx)
        _slim_norm(model.bn2, idx)
        if hasattr(model, "num_features"):
            model.num_features = len(keep)
    elif method == "resnet":
        block = model.layer4[-1]
        conv, bn = ("conv3", "bn3") if hasattr(block, "conv3") else ("conv2", "bn2")
        _slim_conv(getattr(block, conv), idx)
        _slim_norm(getattr(block, bn), idx)
        down = block.downsample
        if down is None:
            block.downsample = ChannelGather(idx)
        elif isinstance(down, nn.Sequential) and isinstance(down[-1], nn.modules.batchnorm._BatchNorm) \
                and isinstance(down[-2], nn.Conv2d):
            _slim_conv(down[-2], idx)
            _slim_norm(down[-1], idx)
        else:
            block.downsample = nn.Sequential(down, ChannelGather(idx))
        if hasattr(model, "num_features"):
            model.num_features = len(keep)
    elif method == "linear":
        found = _linear_producer(model, head_name)
        if found is None:
            raise InspectnetError("saved slimming expects a Linear before the head; the architecture has none")
        lin, between = found
        _slim_linear_rows(lin, idx)
        for m in between:
            if isinstance(m, nn.BatchNorm1d):
                _slim_norm(m, idx)
    else:
        raise InspectnetError(f"unknown slimming method {method!r}")
    head = model.get_submodule(head_name)
    if not isinstance(head, DecomposedLinear):
        raise InspectnetError(f"slimming needs a decomposed head at {head_name!r}; decompose the model first")
    new = DecomposedLinear(len(keep), head.out_features, bias=head.bias is not None).to(head.weight.device)
    with torch.no_grad():
        new.weight.copy_(head.weight[:, idx])
        new.mask.copy_(head.mask[:, idx])
        new.feature_ids.copy_(head.feature_ids[idx])
        if head.bias is not None:
            new.bias.copy_(head.bias)
    set_submodule(model, head_name, new)
    return model


@register_modifier(MODIFIER)
def _rebuild_slimmed(model: nn.Module, mod: dict[str, Any]) -> nn.Module:
    return apply_slimming(model, mod["head_name"], mod["method"], mod["keep"])


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (Conv2d and Linear layers).

    A decomposed head counts one MAC per supported (class, feature) pair.
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
        model(x)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def slim_model(dzm: ZooModel, *, check_batch: torch.Tensor | None = None, atol: float = 1e-4,
               latency_reps: int = 10, batch: int = 8) -> tuple[ZooModel, dict[str, Any]]:
    """Slim a decomposed model to the union of used channels; returns it and a report.

    Logits of the slimmed model are checked against the decomposed model's on ``check_batch``
    (random N(0, 1) inputs when not given); a difference above ``atol`` × max(1, |logit|) is refused.
    """
    head = dzm.model.get_submodule(dzm.head_name)
    if not isinstance(head, DecomposedLinear):
        raise InspectnetError(f"slimming needs a decomposed model (head {dzm.head_name!r} is "
                              f"{type(head).__name__}); run decompose first")
    method = detect_method(dzm.model, dzm.head_name)
    keep = head.union()
    model = apply_slimming(copy.deepcopy(dzm.model), dzm.head_name, method, keep)
    mod = {"kind": MODIFIER, "method": method, "head_name": dzm.head_name, "keep": keep}
    szm = ZooModel(model=model.eval(), source=dzm.source, arch=dzm.arch, num_classes=dzm.num_classes,
                   in_chans=dzm.in_chans, data_config=dict(dzm.data_config), class_names=list(dzm.class_names),
                   head_name=dzm.head_name, modifications=[*dzm.modifications, mod], base=dzm.base)
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
