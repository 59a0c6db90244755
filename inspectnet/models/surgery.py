"""Structural changes to a model, and how a saved model re-applies them when it is loaded.

A saved model folder lists its ``modifications`` on top of the architecture, each a dict whose
``kind`` names it. The kinds and their keys are a file format (old folders must keep loading):

* ``decomposed_head``: ``head_name``, ``in_features``, ``out_features``, ``bias`` (and the ``k1``,
  ``k2`` it was fitted with) — the head is a :class:`~inspectnet.models.heads.DecomposedLinear`;
* ``slimmed``: ``method``, ``head_name``, ``keep`` — the penultimate channels outside ``keep`` were
  removed by :func:`apply_slimming`.

:func:`rebuild` applies them, in order, to a freshly built architecture before its weights are
loaded. Choosing what to decompose or slim is analysis (:mod:`inspectnet.analysis.heads`); the
surgery lives here so that loading a model never imports an analysis.

Slimming removes the penultimate channels that no class uses, exactly: such a channel only feeds
the head, where every class multiplies it by zero. Supported producers:

* ``efficientnet``: timm EfficientNet/MobileNet-style ``conv_head`` + ``bn2`` (rows removed);
* ``resnet``: the last block of ``layer4`` (its output conv + BN rows removed, the shortcut
  gathered to the kept channels, or its downsample conv + BN rows removed);
* ``linear``: a plain ``nn.Linear`` feeding the head through element-wise modules in a Sequential.

>>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
>>> set_submodule(model, "2", DecomposedLinear.from_linear(model[2], torch.tensor([[1, 0, 0], [1, 0, 1]]).bool()))
>>> slimming_method(model, "2")
'linear'
>>> apply_slimming(model, "2", "linear", [0, 2])[0].out_features
2
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from inspectnet.core.errors import InspectnetError
from inspectnet.models.heads import ChannelGather, DecomposedLinear

DECOMPOSED = "decomposed_head"
SLIMMED = "slimmed"
SLIMMING_METHODS = ("efficientnet", "resnet", "linear")
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Hardswish,
                nn.Dropout, nn.Identity, nn.BatchNorm1d)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` (e.g. ``head.fc``) by ``module``.

    Args:
        model: changed in place.
        name: the dotted name of the submodule to replace.
        module: the replacement.

    Examples:
        >>> m = nn.Sequential(nn.Linear(2, 2)); set_submodule(m, "0", nn.Identity()); m
        Sequential(
          (0): Identity()
        )
    """
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


# ---------------------------------------------------------------- slimming
def slimming_method(model: nn.Module, head_name: str) -> str:
    """Which exact slimming applies to ``model``, or an error explaining why none does.

    Args:
        model: the network.
        head_name: the classifier's dotted name.

    Returns:
        One of :data:`SLIMMING_METHODS` (``"efficientnet"``, ``"resnet"`` or ``"linear"``).

    Raises:
        InspectnetError: no known layer produces the head's features channel by channel (or the last
            ResNet block mixes channels with squeeze-excitation).

    Examples:
        >>> slimming_method(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), "2")
        'linear'
    """
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


def apply_slimming(model: nn.Module, head_name: str, method: str, keep: list[int]) -> nn.Module:
    """Structurally remove every penultimate channel not in ``keep`` (used when slimming and on load).

    The head must be a :class:`DecomposedLinear`; it becomes one over the kept columns.

    Args:
        model: changed in place.
        head_name: the classifier's dotted name.
        method: one of :data:`SLIMMING_METHODS` (see :func:`slimming_method`).
        keep: the penultimate channels to keep.

    Returns:
        ``model``.

    Raises:
        InspectnetError: ``method`` is unknown, the head is not decomposed, or a layer cannot be slimmed.
    """
    if method not in SLIMMING_METHODS:
        raise InspectnetError(f"unknown slimming method {method!r}; expected one of {', '.join(SLIMMING_METHODS)}")
    head = model.get_submodule(head_name)
    if not isinstance(head, DecomposedLinear):
        raise InspectnetError(f"slimming needs a decomposed head at {head_name!r}; decompose the model first")
    idx = torch.tensor(keep, dtype=torch.int64)
    {"efficientnet": _slim_efficientnet, "resnet": _slim_resnet, "linear": _slim_linear}[method](model, head_name, idx)
    new = DecomposedLinear(len(keep), head.out_features, bias=head.bias is not None).to(head.weight.device)
    with torch.no_grad():
        new.weight.copy_(head.weight[:, idx])
        new.mask.copy_(head.mask[:, idx])
        new.feature_ids.copy_(head.feature_ids[idx])
        if head.bias is not None:
            new.bias.copy_(head.bias)
    set_submodule(model, head_name, new)
    return model


def _slim_efficientnet(model: nn.Module, _head_name: str, idx: torch.Tensor) -> None:
    _slim_conv(model.conv_head, idx)
    _slim_norm(model.bn2, idx)
    if hasattr(model, "num_features"):
        model.num_features = len(idx)


def _slim_resnet(model: nn.Module, _head_name: str, idx: torch.Tensor) -> None:
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
        model.num_features = len(idx)


def _slim_linear(model: nn.Module, head_name: str, idx: torch.Tensor) -> None:
    found = _linear_producer(model, head_name)
    if found is None:
        raise InspectnetError("saved slimming expects a Linear before the head; the architecture has none")
    lin, between = found
    _keep_rows(lin, idx, ("weight", "bias"))
    lin.out_features = len(idx)
    for m in between:
        if isinstance(m, nn.BatchNorm1d):
            _slim_norm(m, idx)


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


def _slim_conv(conv: nn.Module, keep: torch.Tensor) -> None:
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


# ---------------------------------------------------------------- saved modifications
def _rebuild_decomposed(model: nn.Module, mod: dict[str, Any]) -> nn.Module:
    """Put an empty DecomposedLinear of the saved shape in place; the weights fill it afterwards."""
    set_submodule(model, mod["head_name"], DecomposedLinear(mod["in_features"], mod["out_features"], bias=mod["bias"]))
    return model


def _rebuild_slimmed(model: nn.Module, mod: dict[str, Any]) -> nn.Module:
    return apply_slimming(model, mod["head_name"], mod["method"], mod["keep"])


REBUILDERS: dict[str, Callable[[nn.Module, dict[str, Any]], nn.Module]] = {
    DECOMPOSED: _rebuild_decomposed, SLIMMED: _rebuild_slimmed}


def rebuild(model: nn.Module, modifications: list[dict[str, Any]], *, where: str) -> nn.Module:
    """Re-apply saved ``modifications`` in order to a fresh architecture (before its weights load).

    Args:
        model: the fresh architecture, changed in place.
        modifications: the saved modifications (``{"kind": ..., ...}``), oldest first.
        where: names the saved model in errors.

    Returns:
        ``model``, with the modifications applied.

    Raises:
        InspectnetError: a modification's kind is unknown to this version.

    Examples:
        >>> rebuild(nn.Linear(2, 2), [], where="runs/m")
        Linear(in_features=2, out_features=2, bias=True)
    """
    for mod in modifications:
        if mod.get("kind") not in REBUILDERS:
            raise InspectnetError(f"saved model {where} needs modification {mod.get('kind')!r}, which this "
                                  f"inspectnet does not know (known: {', '.join(REBUILDERS)})")
        model = REBUILDERS[mod["kind"]](model, mod)
    return model
