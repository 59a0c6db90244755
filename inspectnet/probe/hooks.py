"""Probes: forward hooks on named layers that capture (reduced) activations, as a context manager.

Captured tensors are cloned, so an in-place op after the hooked layer (``ReLU(inplace=True)``)
cannot change them; hooks are removed in ``finally``; the model's train/eval flags are untouched.
"""

from collections.abc import Callable, Sequence

import torch
from torch import nn

from inspectnet.core.errors import InspectnetError
from inspectnet.models.layers import PRE_LOGITS, first_tensor, resolve_layers
from inspectnet.models.layout import Layout, layer_layout


def _spatial_dims(t: torch.Tensor) -> tuple[int, ...]:
    """Dimensions averaged away per unit of (B, C, H, W) maps or (B, C) vectors (see :meth:`Layout.maps`)."""
    if t.dim() == 4:
        return (2, 3)
    if t.dim() == 2:
        return ()
    if t.dim() == 3:
        raise InspectnetError(f"cannot reduce a 3-D activation of shape {tuple(t.shape)} without its layout: tokens "
                              f"(B, N, C) need their prefix tokens and grid (inspectnet.models.layout.layer_layout)")
    raise InspectnetError(f"cannot reduce an activation of shape {tuple(t.shape)}; expected (B, C, H, W) or (B, C)")


def absmean(t: torch.Tensor) -> torch.Tensor:
    """Per-filter spatial mean of |F| (Elite BackProp Eq. 1): (B, C, H, W) -> (B, C).

    ``t`` is channels-first maps or vectors; a :class:`Probe` puts channels-last maps and tokens
    (patch tokens only) in that form first.

    Args:
        t: (B, C, ...) activations.

    Returns:
        (B, C) means of the absolute values (vectors: their absolute values).

    Examples:
        >>> absmean(torch.tensor([[[[1.0, -3.0]]]])).tolist()
        [[2.0]]
    """
    dims = _spatial_dims(t)
    return t.abs().mean(dim=dims) if dims else t.abs()


def spatial_mean(t: torch.Tensor) -> torch.Tensor:
    """Per-filter spatial mean of F.

    Args:
        t: (B, C, ...) activations.

    Returns:
        (B, C) means (vectors as they are).

    Examples:
        >>> spatial_mean(torch.tensor([[[[1.0, -3.0]]]])).tolist()
        [[-1.0]]
    """
    dims = _spatial_dims(t)
    return t.mean(dim=dims) if dims else t


def spatial_max(t: torch.Tensor) -> torch.Tensor:
    """Per-filter spatial maximum of F.

    Args:
        t: (B, C, ...) activations.

    Returns:
        (B, C) maxima (vectors as they are).

    Examples:
        >>> spatial_max(torch.tensor([[[[1.0, -3.0]]]])).tolist()
        [[1.0]]
    """
    dims = _spatial_dims(t)
    return t.amax(dim=dims) if dims else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole map, unreduced (for dissection and receptive-field pictures).

    Args:
        t: (B, C, ...) activations.

    Returns:
        ``t`` itself.
    """
    return t


REDUCERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "absmean": absmean, "mean": spatial_mean, "max": spatial_max, "full": full,
}


def get_reducer(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reducer called ``name`` (see :data:`REDUCERS`).

    Args:
        name: ``absmean``, ``mean``, ``max`` or ``full``.

    Returns:
        The reducer function.

    Raises:
        InspectnetError: ``name`` is unknown.

    Examples:
        >>> get_reducer("absmean") is absmean
        True
    """
    if name not in REDUCERS:
        raise InspectnetError(f"unknown reducer {name!r}; expected one of {', '.join(REDUCERS)}")
    return REDUCERS[name]


class Probe:
    """Capture activations of ``layers`` on every forward while inside ``with``.

    Each output is first put in channels-first form by its :class:`~inspectnet.models.layout.Layout`
    (channels-last maps permuted, tokens reshaped to their grid without class, distillation and
    register tokens; ``layouts[name]`` says which), then reduced. ``outputs[name]`` holds the latest
    batch's reduced activation (detached, or attached to the graph with ``keep_graph=True`` for
    losses): (B, C) for the reducers, (B, C, h, w) maps for ``full``. ``pre_logits`` captures the
    classifier's input as it is.

    Args:
        model: the network.
        layers: layer specs (see :func:`~inspectnet.models.layers.resolve_layers`).
        reducer: a name of :data:`REDUCERS` or a function (B, C, ...) -> (B, C).
        head_name: the classifier's dotted name (found when None), for ``pre_logits``.
        keep_graph: keep the outputs attached to the autograd graph (for losses).

    Examples:
        >>> import torchvision
        >>> m = torchvision.models.resnet18(num_classes=4).eval()
        >>> with Probe(m, ["layer4", "pre_logits"]) as probe:
        ...     _ = m(torch.zeros(2, 3, 64, 64))
        >>> {k: tuple(v.shape) for k, v in probe.outputs.items()}
        {'layer4': (2, 512), 'pre_logits': (2, 512)}
    """

    def __init__(self, model: nn.Module, layers: Sequence[str | nn.Module] | str, *,
                 reducer: str | Callable[[torch.Tensor], torch.Tensor] = "absmean",
                 head_name: str | None = None, keep_graph: bool = False):
        self.model = model
        self.head_name = head_name
        self.layers = resolve_layers(model, layers, head_name=head_name)
        self.reduce = get_reducer(reducer) if isinstance(reducer, str) else reducer
        self.keep_graph = keep_graph
        self.outputs: dict[str, torch.Tensor] = {}
        self.layouts: dict[str, Layout] = {}
        self._input_shape: tuple[int, ...] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "Probe":
        try:
            # the input's batch and size check each output's layout (batch axis, grid proportions)
            self._handles.append(self.model.register_forward_pre_hook(self._see_input))
            self._handles.append(self.model.register_forward_hook(lambda *_: self._see_input(None, ())))
            for name in self.layers:
                self._handles.append(self._attach(name))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this probe added (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def _see_input(self, _m: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        self._input_shape = tuple(x.shape) if isinstance(x, torch.Tensor) and x.dim() == 4 else None

    def _attach(self, name: str) -> torch.utils.hooks.RemovableHandle:
        if name == PRE_LOGITS:
            if self.head_name is None:
                from inspectnet.models.zoo import find_head

                self.head_name = find_head(self.model)
            head = self.model.get_submodule(self.head_name)
            return head.register_forward_pre_hook(lambda _m, args: self._store(PRE_LOGITS, args[0], raw=True))
        module = self.model.get_submodule(name)
        return module.register_forward_hook(lambda _m, _i, out: self._store(name, first_tensor(out)))

    def _store(self, name: str, t: torch.Tensor | None, raw: bool = False) -> None:
        if t is None:
            raise InspectnetError(f"layer {name!r} produced no tensor to probe")
        if not raw:
            layout = layer_layout(self.model, name, t, input_shape=self._input_shape)
            self.layouts[name] = layout
            t = self.reduce(layout.maps(t))
        value = t if self.keep_graph else t.detach()
        # clone: later in-place ops (ReLU(inplace=True)) would otherwise rewrite what was captured
        self.outputs[name] = value.clone()
