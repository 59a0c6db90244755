"""Where a classifier's last spatial map is and how its head pools it, read from the modules the model runs.

One forward pass on a seeded input records, in order, when each module starts and ends and what it
returns. The head's input f is compared with the average of every earlier map (latest first, stopping
at the global pooling), in each layout a map can have: channels-first ``NCHW`` (CNNs), channels-last
``NHWC`` (Swin) and tokens ``NLC`` (ViT-style, prefix tokens excluded), directly or through a
LayerNorm that ran in between. The first map whose average is f is the one the evidence is taken on,
so no attribute name (``forward_features``, ``patch_embed``) is needed and torchvision models are read
like timm ones. When no map matches, the modules that ran between the last map and the classifier
say why, in one line: an activation after global pooling (MobileNetV3), hidden layers (VGG's MLP
head), a second classifier combined with the first (distillation heads), the class token.

>>> from inspectnet.models.zoo import load_model
>>> read_pooled_head(load_model("torchvision:resnet18", num_classes=3, input_size=64)).map_module
'layer4'
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from inspectnet.core.errors import InspectnetError
from inspectnet.models.layers import NORMALISATIONS, eval_mode

if TYPE_CHECKING:
    from inspectnet.models.zoo import ZooModel

LAYOUTS = ("NCHW", "NHWC", "NLC")
# modules that pass a pooled vector on unchanged (what may sit between the pooling and the classifier)
_PASS_THROUGH = (nn.Identity, nn.Flatten, nn.Dropout)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish,
                nn.LeakyReLU, nn.PReLU, nn.ELU)


@dataclasses.dataclass(frozen=True)
class PooledHead:
    """Where the last map is and what lies between its average and the classifier.

    Names, not modules, so the description also holds for a copy of the model (the export form).

    Attributes:
        head_name: the dotted name of the classifier (a linear layer).
        map_module: the module whose output is the map (hooked at run time).
        layout: how that output holds its positions (see :data:`LAYOUTS`).
        prefix_tokens: leading tokens that are not positions (class, distillation, register tokens).
        grid: the (h, w) grid of the tokens (None for a spatial layout).
        norm: the LayerNorm applied to the pooled vector, or None.

    Examples:
        >>> PooledHead("head", "blocks", layout="NLC", prefix_tokens=1, grid=(2, 2)).tokens
        True
    """

    head_name: str
    map_module: str = ""
    layout: str = "NCHW"
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None
    norm: str | None = None

    @property
    def tokens(self) -> bool:
        """Whether the map is a token sequence (layout ``NLC``) rather than a spatial map."""
        return self.layout == "NLC"


@dataclasses.dataclass
class _Trace:
    """The modules of one forward pass.

    ``events`` are (kind, name) with kind ``start`` or ``end``; ``outputs`` the last output of each module;
    ``head_input`` the classifier's input.
    """

    events: list[tuple[str, str]]
    outputs: dict[str, Any]
    modules: dict[str, nn.Module]
    head_input: torch.Tensor
    logits: torch.Tensor

    def index(self, kind: str, name: str) -> int:
        return max(i for i, e in enumerate(self.events) if e == (kind, name))


def trace_forward(model: nn.Module, x: torch.Tensor, head_name: str) -> _Trace:
    """Run ``model`` on ``x`` once with every module hooked (see the module doc).

    Args:
        model: the classifier; ``head_name`` names its final linear layer.
        x: an input batch.
        head_name: the dotted name of the head, whose input is recorded.

    Returns:
        the trace: start/end events in order, each module's last output, the head's input, the logits.

    Raises:
        InspectnetError: the head did not run, or the model does not return one logits tensor.

    Examples:
        >>> from torchvision.models import resnet18
        >>> trace_forward(resnet18(num_classes=2), torch.randn(1, 3, 64, 64), "fc").head_input.shape
        torch.Size([1, 512])
    """
    events: list[tuple[str, str]] = []
    outputs: dict[str, Any] = {}
    head_input: list[torch.Tensor] = []
    modules = {n: m for n, m in model.named_modules() if n}
    handles = []

    def ended(name: str, out: Any) -> None:  # a hook that returns something would replace the output
        events.append(("end", name))
        outputs[name] = out

    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(lambda _m, _i, n=name: events.append(("start", n)) and None))
        handles.append(module.register_forward_hook(lambda _m, _i, out, n=name: ended(n, out)))
    handles.append(model.get_submodule(head_name).register_forward_pre_hook(lambda _m, i: head_input.append(i[0])))
    try:
        with eval_mode(model), torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    if not head_input or not isinstance(logits, torch.Tensor):
        raise InspectnetError(f"the head {head_name!r} did not run on a forward pass, or the model does not return "
                              f"one logits tensor; its last map cannot be located")
    return _Trace(events, outputs, modules, head_input[-1].flatten(1), logits)


def read_pooled_head(zm: ZooModel) -> PooledHead:
    """Locate the map that ``zm``'s head averages, or refuse in one line naming the property that prevents it.

    Args:
        zm: the model; its head (``zm.head_name``) must be a linear layer.

    Returns:
        the :class:`PooledHead` read from one traced forward pass at the model's input size.

    Raises:
        InspectnetError: no averaged map is found, a map is folded to one position before the head, or tokens
            form no known grid (the property named).

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> read_pooled_head(load_model("resnet18", input_size=64)).layout
        'NCHW'
    """
    size = tuple(zm.data_config["input_size"])
    device = next(zm.model.parameters()).device
    # one image: the trace keeps every module's output until the map is found
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0)).to(device)
    trace = trace_forward(zm.model, x, zm.head_name)
    head_start = trace.index("start", zm.head_name)
    pool_start = _last_pool_start(trace, head_start)
    ended = [n for kind, n in trace.events[:pool_start] if kind == "end"]
    candidates = [n for n in dict.fromkeys(reversed(ended)) if _is_map(trace.outputs[n], len(x))]
    prefix = int(getattr(zm.model, "num_prefix_tokens", 0) or 0)
    for name in candidates:
        norm = _norm_between(trace, name, head_start)
        for layout in _layouts(trace.outputs[name]):
            if _matches(trace, pool_map(trace.outputs[name], layout, prefix), norm):
                _check_positions(zm, trace, name, layout, candidates, min(size[1:]))
                return PooledHead(zm.head_name, map_module=name, layout=layout,
                                  prefix_tokens=prefix if layout == "NLC" else 0,
                                  grid=_token_grid(zm, trace.outputs[name], prefix) if layout == "NLC" else None,
                                  norm=norm)
    raise refusal(zm, _why_not(zm, trace, candidates, head_start, pool_start, prefix))


def _positions(out: torch.Tensor, layout: str) -> int:
    if layout == "NLC":
        return out.shape[1]
    return out.shape[2] * out.shape[3] if layout == "NCHW" else out.shape[1] * out.shape[2]


def _check_positions(zm: ZooModel, trace: _Trace, name: str, layout: str, candidates: list[str], side: int) -> None:
    """Refuse a single-position map that layers with weights made from a larger one, at inputs of 64 px or more.

    Small inputs shrink any CNN's last map to one position (legitimately); at 64 px a map of one
    position means the head folds the whole map into one vector first (VGG's 7x7 convolution), so
    the "evidence" would be the logit itself, not a map.
    """
    if side < 64 or _positions(trace.outputs[name], layout) > 1:
        return
    earlier = [n for n in candidates[candidates.index(name) + 1:]
               if trace.outputs[n].dim() == 4 and _positions(trace.outputs[n], "NCHW") > 1]
    if earlier:
        between = _leaves(trace, trace.index("end", earlier[0]), trace.index("end", name))
        raise refusal(zm, f"folds its last multi-position map {earlier[0]!r} into a single position with "
                          f"{_kinds(trace, between)} before pooling at {side} px (an MLP-like head: one position "
                          f"carries no spatial evidence)")


def refusal(zm: ZooModel, reason: str, hint: str = "") -> InspectnetError:
    """The one-line refusal of exact class evidence for ``zm`` because of ``reason`` (a property of its head).

    Args:
        zm: the model (its spec starts the message).
        reason: what the head does, e.g. "reads the class token".
        hint: what would make it exact, or empty.

    Returns:
        the error to raise.

    Examples:
        >>> from types import SimpleNamespace
        >>> str(refusal(SimpleNamespace(spec="timm:x"), "pools with max")).split(":")[1]
        'x pools with max'
    """
    return InspectnetError(f"{zm.spec} {reason}: its head is not average pooling + linear, so exact class-evidence "
                           f"maps are refused" + (f" ({hint})" if hint else "") + "; the other metrics still run")


def _is_map(out: Any, batch: int) -> bool:
    return isinstance(out, torch.Tensor) and out.dim() in (3, 4) and out.shape[0] == batch and out.is_floating_point()


def _layouts(out: torch.Tensor) -> tuple[str, ...]:
    return ("NLC",) if out.dim() == 3 else ("NCHW", "NHWC")


def _is_pool(module: nn.Module) -> bool:
    return "Pool" in type(module).__name__ and "Attention" not in type(module).__name__


def _last_pool_start(trace: _Trace, head_start: int) -> int:
    """Where the last pooling module before the head starts (the head's start when the pooling is functional)."""
    starts = [i for i, (kind, n) in enumerate(trace.events[:head_start]) if kind == "start" and _is_pool(trace.modules[n])]
    return starts[-1] if starts else head_start


def _norm_between(trace: _Trace, name: str, head_start: int) -> str | None:
    """The last LayerNorm over features that ran after ``name`` ended and before the head started."""
    after = trace.index("end", name)
    norms = [n for kind, n in trace.events[after:head_start] if kind == "start"
             and isinstance(trace.modules[n], nn.LayerNorm) and len(trace.modules[n].normalized_shape) == 1]
    return norms[-1] if norms else None


def pool_map(out: torch.Tensor, layout: str, prefix: int = 0) -> torch.Tensor:
    """The average over positions (B, d) of a map in ``layout`` (tokens: the first ``prefix`` excluded).

    Args:
        out: the map, (B, d, H, W), (B, H, W, d) or (B, L, d).
        layout: ``NCHW``, ``NHWC`` or ``NLC``.
        prefix: leading tokens that are not positions (``NLC`` only).

    Returns:
        the pooled vectors (B, d).

    Examples:
        >>> pool_map(torch.ones(2, 3, 4, 5), "NHWC").shape
        torch.Size([2, 5])
    """
    if layout == "NCHW":
        return out.mean((2, 3))
    if layout == "NHWC":
        return out.mean((1, 2))
    return out[:, prefix:].mean(1)


def _matches(trace: _Trace, pooled: torch.Tensor, norm: str | None) -> bool:
    f = trace.head_input
    if pooled.shape != f.shape:
        return False
    tol = 1e-5 * float(f.abs().max()) + 1e-7  # float32 means of the same numbers, summed in another order
    if float((pooled - f).abs().max()) <= tol:
        return True
    if norm is None:
        return False
    ln = trace.modules[norm]
    with torch.no_grad():
        normed = F.layer_norm(pooled, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    return float((normed - f).abs().max()) <= tol


def _token_grid(zm: ZooModel, out: torch.Tensor, prefix: int) -> tuple[int, int]:
    """(h, w) of the patch tokens: the patch embedding's grid, else a square of them; refused otherwise."""
    grid = getattr(getattr(zm.model, "patch_embed", None), "grid_size", None)
    n = out.shape[1] - prefix
    if grid is not None and int(grid[0]) * int(grid[1]) == n:
        return int(grid[0]), int(grid[1])
    side = math.isqrt(n)
    if side * side != n:
        raise refusal(zm, f"averages {n} tokens that do not form a known or square grid")
    return side, side


def _why_not(zm: ZooModel, trace: _Trace, candidates: list[str], head_start: int, pool_start: int,
             prefix: int) -> str:
    """The property of the head that stops the evidence being exact (no earlier map averages to its input)."""
    model = zm.model
    pool = getattr(model, "global_pool", None)
    if isinstance(pool, str) and candidates and trace.outputs[candidates[0]].dim() == 3:
        if getattr(model, "attn_pool", None) is not None or pool == "map":
            return "pools its tokens with attention (the weights depend on every token jointly)"
        if getattr(model, "pool_include_prefix", False):
            return "averages the class/register tokens together with the patches"
    tokens = [n for n in candidates if trace.outputs[n].dim() == 3]
    if tokens and _matches(trace, trace.outputs[tokens[0]][:, 0], _norm_between(trace, tokens[0], head_start)):
        return "reads the class token, whose dependence on each patch goes through attention"
    after = _leaves(trace, trace.index("end", zm.head_name), len(trace.events), weighted=True)
    if after:
        return (f"combines its classifier {zm.head_name!r} with a second head run after it ({', '.join(after[:3])}, "
                f"e.g. a distillation head averaged with the first)")
    if pool_start < head_start:
        begin = trace.index("end", candidates[0]) if candidates else 0
        pools = [trace.modules[n] for k, n in trace.events[begin:head_start] if k == "start" and _is_pool(trace.modules[n])]
        kind = next((p.pool_type for p in pools if isinstance(getattr(p, "pool_type", None), str)),
                    type(trace.modules[trace.events[pool_start][1]]).__name__)
        if "max" in str(kind).lower():
            return f"pools its last map with {kind!r} pooling; the sum over positions is exact only for average pooling"
        tail = _leaves(trace, pool_start, head_start)
        if any(isinstance(trace.modules[n], _ACTIVATIONS) for n in tail):
            return (f"applies {_kinds(trace, tail)} after global pooling (activation after global pooling: the logit "
                    f"is not linear in the last map; exactness stops at the pooled vector)")
        if tail:
            return f"applies {_kinds(trace, tail)} after global pooling (a hidden layer between the pooling and classifier)"
    last_map = candidates[0] if candidates else None
    between = _leaves(trace, trace.index("end", last_map), pool_start) if last_map else []
    if between and all(isinstance(trace.modules[n], NORMALISATIONS) for n in between):
        return (f"normalises the pooled features with {_kinds(trace, between)} before the classifier (only a "
                f"LayerNorm there is folded into the evidence)")
    if between:
        return (f"applies {_kinds(trace, between)} between its last map {last_map!r} and the classifier "
                f"(hidden layers: the logit is not linear in the map)")
    return "feeds its classifier something that is not the average of any earlier map"


def _leaves(trace: _Trace, begin: int, end: int, weighted: bool = False) -> list[str]:
    """Leaf modules that start in events[begin:end] and do something (not Identity/Flatten/Dropout/pooling)."""
    found = []
    for kind, n in trace.events[begin:end]:
        m = trace.modules[n]
        if kind != "start" or any(True for _ in m.children()) or isinstance(m, _PASS_THROUGH) or _is_pool(m):
            continue
        if weighted and not any(True for _ in m.parameters()):
            continue
        found.append(n)
    return list(dict.fromkeys(found))


def _kinds(trace: _Trace, names: list[str]) -> str:
    """'Conv2d and Hardswish'-style list of the module types of ``names`` (each type once)."""
    kinds = list(dict.fromkeys(type(trace.modules[n]).__name__ for n in names))
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]
