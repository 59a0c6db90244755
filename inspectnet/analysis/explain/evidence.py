"""Exact class-evidence maps for heads that average-pool the last map and then apply a linear layer.

With A the last spatial map (B, d, H, W), f = mean_hw A and logit_c = Σ_j W[c, j]·f_j + b_c, the
evidence of class c at position (h, w) is::

    E_c(h, w) = Σ_{j∈S_c} W[c, j]·A_j(h, w) / (H·W)        Σ_hw E_c(h, w) = logit_c − b_c   (exactly)

S_c is every feature for a dense head and the influential set for a decomposed one (its weights off
S_c are exact zeros). Where a LayerNorm follows the pooling (timm ConvNeXt, ViT with average
pooling), f = γ ⊙ (m − μ)/σ + β is affine in the pooled map m with the per-image scalars μ, σ, so
``E_c(h, w) = Σ_j W[c, j]·γ_j·(A_j(h, w) − ā(h, w)) / (σ·H·W)`` with ā the channel mean at (h, w),
and the maps sum to logit_c − b_c − (Wβ)_c. :attr:`ClassEvidence.offset` is that constant part
(b, or b + Wβ), so ``E.sum((2, 3)) + offset[classes] == logits[classes]`` in every case.

The last map is located from the modules the model runs (:mod:`.pooled_map`), in whichever layout
it has: channels-first (CNNs, torchvision or timm), channels-last (Swin) or tokens (ViT with average
pooling; class, distillation and register tokens are not positions). Heads that are not average
pooling + linear are refused in one line naming the property: a class token, attention or max
pooling, an activation or hidden layer after the pooling (MobileNetV3, VGG, EfficientViT), a second
head combined with the first (DeiT-distilled, LeViT).

>>> from inspectnet.models.zoo import load_model
>>> zm = load_model("resnet18", num_classes=3, input_size=32)
>>> ev = class_evidence(zm, torch.randn(2, 3, 32, 32), classes="all")
>>> ev.maps.shape, bool(torch.allclose(ev.maps.sum((2, 3)) + ev.offset, ev.logits, atol=1e-4))
(torch.Size([2, 3, 1, 1]), True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from inspectnet.analysis.explain.pooled_map import PooledHead, read_pooled_head, refusal
from inspectnet.core.errors import InspectnetError
from inspectnet.models.heads import ChannelGather, DecomposedLinear
from inspectnet.models.layers import eval_mode
from inspectnet.runtime.overlays import check_image_size

if TYPE_CHECKING:
    from inspectnet.models.zoo import ZooModel

ClassChoice = str | Sequence[int] | torch.Tensor
__all__ = ["ClassEvidence", "Evidence", "PooledHead", "choose_classes", "class_evidence", "pooled_head",
           "reads_weights_of", "sums_to_logits"]


def pooled_head(zm: ZooModel) -> PooledHead:
    """Read how ``zm`` turns its last map into logits, or refuse in one line with the reason.

    The reading is then checked on a seeded random input: the evidence must sum to the model's own
    logits (to float tolerance), so an architecture read wrongly is refused, never explained wrongly.

    Args:
        zm: the model (timm or torchvision; its head ``zm.head_name`` is the classifier).

    Returns:
        the :class:`PooledHead` that :class:`ClassEvidence` reads.

    Raises:
        InspectnetError: the head is not a linear layer, the model does not pool a last map (e.g. it reads a
            class token), or its evidence does not sum to its logits.

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> pooled_head(load_model("resnet18", input_size=32)).head_name
        'fc'
    """
    head = zm.model.get_submodule(zm.head_name)
    if not isinstance(head, nn.Linear):
        raise InspectnetError(f"the head {zm.head_name!r} of {zm.spec} is a {type(head).__name__}, not a linear "
                              f"layer; class-evidence maps need logits = W·mean(A) + b")
    try:
        found = read_pooled_head(zm)
    except InspectnetError as exc:
        if "class token" in str(exc) and isinstance(getattr(zm.model, "global_pool", None), str):
            raise refusal(zm, "reads the class token, whose dependence on each patch goes through attention",
                          hint="build it with global_pool='avg' for the exact token-grid version") from None
        raise
    _check_exact(zm, found)
    return found


def reads_weights_of(head: nn.Module) -> bool:
    """Whether :class:`ClassEvidence` can read ``W`` and ``b`` from ``head``.

    Args:
        head: the classifier module.

    Returns:
        True for a linear layer (dense or :class:`DecomposedLinear`) or its export form (a gather of the used
        channels followed by a linear layer).

    Examples:
        >>> reads_weights_of(nn.Linear(4, 2)), reads_weights_of(nn.Conv2d(4, 2, 1))
        (True, False)
    """
    return isinstance(head, nn.Linear) or (_gathered(head) and isinstance(head[1], nn.Linear))


def _gathered(head: nn.Module) -> bool:
    """Whether ``head`` is the export form of a slimmed head: a gather of the used channels, then a layer."""
    return isinstance(head, nn.Sequential) and len(head) == 2 and isinstance(head[0], ChannelGather)


def sums_to_logits(total: torch.Tensor, logits: torch.Tensor) -> float | None:
    """Whether evidence sums equal the logits to float tolerance: the largest difference if not, else None.

    The tolerance is relative (1e-4 of the largest logit, plus 1e-6): random heads give logits of 0.01.

    Args:
        total: (B, classes) the evidence summed over positions, plus the offset.
        logits: (B, classes) the model's logits.

    Returns:
        None where every sum is within tolerance, else the largest absolute difference.

    Examples:
        >>> sums_to_logits(torch.tensor([[10.0, 2.0]]), torch.tensor([[10.0005, 2.0]])) is None
        True
        >>> round(sums_to_logits(torch.tensor([[10.0, 2.0]]), torch.tensor([[10.01, 2.0]])), 4)
        0.01
    """
    diff = float((total - logits).abs().max())
    return diff if diff > 1e-4 * float(logits.abs().max()) + 1e-6 else None


def _check_exact(zm: ZooModel, found: PooledHead) -> None:
    module = evidence_module(zm.model, found)
    size = tuple(zm.data_config["input_size"])
    device = next(zm.model.parameters()).device
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0)).to(device)
    with eval_mode(zm.model), torch.no_grad():
        want = zm.model(x)
        got = module.evidence(x, torch.arange(want.shape[1], device=device).expand(2, -1))
    diff = sums_to_logits(got.maps.sum((2, 3)) + got.offset, want)
    if diff is not None:
        raise refusal(zm, f"does not compute its logits as read (evidence sums differ from the logits by {diff:.3g})")


@dataclasses.dataclass(frozen=True)
class Evidence:
    """Class-evidence maps of a batch, with ``maps.sum((2, 3)) + offset == logits.gather(1, classes)``.

    Attributes:
        maps: (B, k, H, W) the evidence of ``classes``.
        classes: (B, k) the explained classes.
        logits: (B, C) the model's logits.
        offset: (B, k) the part of each explained logit that no position carries.
    """

    maps: torch.Tensor
    classes: torch.Tensor
    logits: torch.Tensor
    offset: torch.Tensor


class ClassEvidence(nn.Module):
    """``model`` with its top-``k`` classes' evidence as a second output, as the ONNX export holds it.

    ``forward(x) -> (logits, evidence (B, k, H, W), classes (B, k))`` for its top-``k`` classes. This is
    what ``inspectnet export --evidence`` puts into the ONNX graph.

    The head may be a dense Linear, a :class:`DecomposedLinear` or its export form (a gather of the
    used features followed by a Linear): the weights are read from the module at ``head_name``, so
    the evidence always matches what the logits use. The maps cost B·k·d·H·W multiply-adds.

    Args:
        model: the model (or its export form: a copy with the same module names).
        pooled: how its head reads the last map (:func:`pooled_head`).
        k: the number of top classes ``forward`` returns maps of.

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=3, input_size=64)
        >>> ev = ClassEvidence(zm.model, pooled_head(zm)).evidence(torch.randn(2, 3, 64, 64), "all")
        >>> bool(torch.allclose(ev.maps.sum((2, 3)) + ev.offset, ev.logits, atol=1e-4))
        True
    """

    def __init__(self, model: nn.Module, pooled: PooledHead, k: int = 1):
        super().__init__()
        self.model, self.pooled, self.k = model, pooled, int(k)

    def _weights(self) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """(channels the head reads or None for all, W over those channels, bias)."""
        head = self.model.get_submodule(self.pooled.head_name)
        if _gathered(head):
            return head[0].index, head[1].weight, head[1].bias
        if isinstance(head, DecomposedLinear):
            return None, head.effective_weight(), head.bias
        return None, head.weight, head.bias

    def _norm(self) -> nn.LayerNorm | None:
        return self.model.get_submodule(self.pooled.norm) if self.pooled.norm else None

    def offset(self) -> torch.Tensor:
        """Per class, the part of the logit that no position carries.

        Returns:
            (C,) the head bias b (+ Wβ after a LayerNorm).
        """
        channels, w, b = self._weights()
        out = b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        norm = self._norm()
        if norm is not None and norm.bias is not None:
            beta = norm.bias if channels is None else norm.bias.index_select(0, channels)
            out = out + w @ beta
        return out

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output of the map module and the logits, from one forward pass of the model.

        The map is caught by a forward hook held only during this call (both ONNX exporters trace
        through it), so the same code serves timm and torchvision models and copies of them.

        Args:
            x: (B, C, H, W) input images.

        Returns:
            ``(map module output, logits (B, classes))``.
        """
        caught: list[torch.Tensor] = []
        handle = self.model.get_submodule(self.pooled.map_module).register_forward_hook(
            lambda _m, _i, out: caught.append(out))
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        return caught[-1], logits

    def grid(self, features: torch.Tensor) -> torch.Tensor:
        """The map that the head averages, from the map module's output in its layout.

        Args:
            features: the map module's output (NCHW, NHWC or tokens).

        Returns:
            The (B, d, H, W) map.
        """
        if self.pooled.layout == "NHWC":
            return features.permute(0, 3, 1, 2)
        if not self.pooled.tokens:
            return features
        patches = features[:, self.pooled.prefix_tokens:]
        gh, gw = self.pooled.grid
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], gh, gw)

    def _positions(self, grid: torch.Tensor) -> torch.Tensor:
        """What W multiplies at each position, (B, d', H·W): the map itself, or its LayerNorm-folded form."""
        channels, _, _ = self._weights()
        norm = self._norm()
        if norm is not None:
            pooled = grid.mean((2, 3))
            sigma = torch.sqrt(pooled.var(1, unbiased=False) + norm.eps)
            grid = grid - grid.mean(1, keepdim=True)
            gamma = norm.weight if norm.weight is not None else torch.ones_like(pooled[0])
            grid = grid * gamma[None, :, None, None] / sigma[:, None, None, None]
        if channels is not None:
            grid = grid.index_select(1, channels)
        return grid.flatten(2)

    def maps_for(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The evidence of ``classes`` from the map module's output.

        Args:
            features: the map module's output.
            classes: (B, k) class indices, or (k,) the same classes for every image (one read of their
                weight rows instead of one per image: all classes of a large batch stay cheap).

        Returns:
            The (B, k, H, W) evidence maps.
        """
        grid = self.grid(features)
        _, w, _ = self._weights()
        h, wd = grid.shape[2], grid.shape[3]
        rows, positions = w[classes], self._positions(grid)
        out = torch.einsum("kd,bdp->bkp", rows, positions) if classes.dim() == 1 else torch.matmul(rows, positions)
        return out.unflatten(2, (h, wd)) / (h * wd)

    def evidence(self, x: torch.Tensor, classes: ClassChoice | None = None,
                 class_names: Sequence[str] | None = None) -> Evidence:
        """Logits and the evidence of ``classes`` from one forward pass.

        Args:
            x: (B, C, H, W) input images.
            classes: a (B, k) tensor or a :func:`choose_classes` choice, resolved on this pass's logits; the
                top-``k`` classes when None.
            class_names: the class names a choice by name is resolved against.

        Returns:
            The :class:`Evidence`.

        Raises:
            InspectnetError: ``classes`` chooses no class or one the model lacks.
        """
        features, logits = self.features_and_logits(x)
        if classes is None:
            classes = logits.topk(self.k, dim=1).indices
        else:
            classes = choose_classes(classes, logits, class_names)
        maps = self.maps_for(features, classes)
        return Evidence(maps=maps, classes=classes, logits=logits, offset=self.offset()[classes])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The logits and the top-``k`` classes' evidence, as the exported graph outputs them.

        Args:
            x: (B, C, H, W) input images.

        Returns:
            ``(logits (B, C), evidence (B, k, H, W), classes (B, k))``.
        """
        ev = self.evidence(x)
        return ev.logits, ev.maps, ev.classes


def choose_classes(choice: ClassChoice, logits: torch.Tensor, class_names: Sequence[str] | None = None) -> torch.Tensor:
    """The (B, k) class indices a choice names for a batch's logits.

    Args:
        choice: ``"top1"`` / ``"topK"`` (per image), ``"all"``, a list of indices or names (``"3,7"``), or a
            (k,) or (B, k) tensor.
        logits: (B, C) the batch's logits.
        class_names: the class names a choice by name is resolved against.

    Returns:
        The (B, k) int64 class indices.

    Raises:
        InspectnetError: ``topK`` beyond the class count, an empty choice, an unknown name or an index out of
            range.

    Examples:
        >>> choose_classes("top2", torch.tensor([[0.1, 0.9, 0.5]])).tolist()
        [[1, 2]]
        >>> choose_classes("0,2", torch.zeros(2, 3)).tolist()
        [[0, 2], [0, 2]]
    """
    b, c = logits.shape
    if isinstance(choice, torch.Tensor):
        chosen = choice.to(logits.device, torch.int64)
        chosen = chosen.expand(b, -1) if chosen.dim() == 1 else chosen
    elif isinstance(choice, str) and choice == "all":
        chosen = torch.arange(c, device=logits.device).expand(b, -1)
    elif isinstance(choice, str) and choice.startswith("top") and choice[3:].isdigit():
        k = int(choice[3:])
        if not 1 <= k <= c:
            raise InspectnetError(f"--classes {choice}: the model has {c} classes; expected top1 to top{c}")
        return logits.topk(k, dim=1).indices
    else:
        items = [s.strip() for s in choice.split(",") if s.strip()] if isinstance(choice, str) else list(choice)
        chosen = torch.tensor([_class_index(i, c, class_names) for i in items], dtype=torch.int64,
                              device=logits.device).expand(b, -1)
    if chosen.numel() == 0 or chosen.shape[0] != b:
        raise InspectnetError(f"--classes chose no class for {b} image(s); expected top1, all or indices like 0,3")
    bad = chosen[(chosen < 0) | (chosen >= c)]
    if bad.numel():
        raise InspectnetError(f"--classes names class {int(bad[0])}, but the model has classes 0..{c - 1}")
    return chosen


def _class_index(item: int | str, num_classes: int, class_names: Sequence[str] | None) -> int:
    if isinstance(item, int) or (isinstance(item, str) and item.lstrip("-").isdigit()):
        return int(item)
    if class_names is not None and item in class_names:
        return list(class_names).index(item)
    raise InspectnetError(f"--classes: {item!r} is neither a class index (0..{num_classes - 1}) nor a class name "
                          f"of the model")


def class_evidence(zm: ZooModel, x: torch.Tensor, classes: ClassChoice = "top1", *,
                   pooled: PooledHead | None = None) -> Evidence:
    """Exact class-evidence maps of ``classes`` for the batch ``x`` (see the module doc), without gradients.

    Args:
        zm: the model.
        x: (B, C, H, W) model inputs.
        classes: ``"top1"``/``"topK"`` (per image), ``"all"``, indices or names, or a (B, k) tensor.
        pooled: the head's reading (:func:`pooled_head`); given, it skips re-reading the head in a loop.

    Returns:
        The :class:`Evidence`, its offset detached.

    Raises:
        InspectnetError: the head is refused (:func:`pooled_head`), ``classes`` is invalid, or the input is
            smaller than the map.

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=3, input_size=64)
        >>> class_evidence(zm, torch.randn(2, 3, 64, 64), "top1").maps.shape
        torch.Size([2, 1, 2, 2])
    """
    module = evidence_module(zm.model, pooled or pooled_head(zm))
    with eval_mode(zm.model), torch.no_grad():
        ev = module.evidence(x, classes, zm.class_names)
    check_image_size("input", (x.shape[2], x.shape[3]), (ev.maps.shape[2], ev.maps.shape[3]))
    return dataclasses.replace(ev, offset=ev.offset.detach())


def evidence_module(model: nn.Module, pooled: PooledHead, k: int = 1) -> ClassEvidence:
    """The module that computes the evidence of ``model`` read as ``pooled``.

    It is what :func:`class_evidence` runs and what the export puts into the ONNX graph. Every kind of
    evidence goes through here.

    Args:
        model: the model (or its export form: a copy with the same module names).
        pooled: how its head reads the last map (:func:`pooled_head`).
        k: the number of top classes ``forward`` returns maps of.

    Returns:
        a :class:`ClassEvidence` (``forward(x) -> (logits, maps, classes)``, ``evidence(x, classes)``).

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=3, input_size=64)
        >>> [t.shape[1] for t in evidence_module(zm.model, pooled_head(zm), k=2)(torch.randn(1, 3, 64, 64))]
        [3, 2, 2]
    """
    return ClassEvidence(model, pooled, k)
