"""Contract checks for fine-tuning plugins, public so that a third-party plugin runs the same ones.

>>> from torch import nn
>>> from inspectnet.plugins import make_plugin
>>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
>>> check_plugin(lambda: make_plugin("kwta:k=0.5,layer=1"), model)
['attach/detach', 'state dict', 'distributed']
"""

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from inspectnet.plugins import Plugin


class PluginContractError(AssertionError):
    """A plugin broke its contract; the message names the plugin and the clause."""


def check_plugin(plugin_factory: Callable[[], Plugin], model: nn.Module, x: torch.Tensor | None = None, *,
                 num_classes: int | None = None, distributed: bool = True) -> list[str]:
    """Run the plugin contract on ``model``; raise :class:`PluginContractError` at the first clause broken.

    The clauses: (1) attach, a training step (forward, ``loss``, backward), the epoch hooks and
    ``detach`` leave the model bit for bit as it was (weights, buffers, outputs, train/eval and
    ``requires_grad`` flags, no hook left) and ``detach`` may be called twice; a plugin that
    declares ``rewrites_weights`` may keep the weights as ``attach`` rewrote them, nothing else; the loss terms are
    finite float32 scalars and the epoch metrics finite JSON values; (2) ``state_dict`` survives
    ``torch.save`` / ``torch.load(weights_only=True)`` and a fresh plugin that loads it returns the
    same state; (3) where ``torch.distributed`` is available and no process group is running, a
    training step through ``DistributedDataParallel`` (one process) gives the gradients of the plain
    step. ``model`` is left as it was. Its batch-normalisation layers are held in eval mode while
    the plugin trains (a training step moves their statistics whatever the plugin does); outputs are
    compared in eval mode.

    Args:
        plugin_factory: returns a new, unattached plugin (e.g. ``lambda: make_plugin("ebp:layer=conv")``).
        model: a small model the plugin can attach to.
        x: a batch for it (default: 4 random images or vectors sized from the first conv or linear layer).
        num_classes: the model's outputs (default: read from a forward pass).
        distributed: also run clause (3) where it applies.

    Returns:
        The clauses that ran.

    Examples:
        >>> check_plugin(lambda: MyPlugin(lam=0.1), torchvision.models.resnet18(num_classes=3))  # doctest: +SKIP
    """
    x = _example_input(model) if x is None else x
    reference = _outputs(model, x)
    num_classes = num_classes or reference.shape[1]
    y = torch.arange(len(x)) % num_classes
    modes = [m.training for m in model.modules()]
    try:
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        ran = [_check_attach_detach(plugin_factory, model, x, y, num_classes, reference), "state dict"]
        _check_state_round_trip(plugin_factory, model, x, y, num_classes)
        if distributed and torch.distributed.is_available() and not torch.distributed.is_initialized():
            _check_distributed(plugin_factory, model, x, y, num_classes)
            ran.append("distributed")
    finally:
        for m, training in zip(model.modules(), modes):
            m.training = training
    return ran


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's outputs in eval mode (its modes restored)."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for m, training in zip(model.modules(), modes):
            m.training = training


def _example_input(model: nn.Module) -> torch.Tensor:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)), None)
    if first is None:
        raise PluginContractError("the model has no Conv2d or Linear layer to size an input from; pass x")
    generator = torch.Generator().manual_seed(0)
    if isinstance(first, nn.Linear):
        return torch.randn(4, first.in_features, generator=generator)
    return torch.randn(4, first.in_channels, 16, 16, generator=generator)


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "modes": [(n, m.training) for n, m in model.named_modules()],
            "modules": [(n, type(m)) for n, m in model.named_modules()],
            "grad_flags": [(n, p.requires_grad) for n, p in model.named_parameters()],
            "hooks": _hook_count(model)}


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _fail(plugin: Plugin, clause: str) -> PluginContractError:
    return PluginContractError(f"plugin {plugin.name or type(plugin).__name__}: {clause}")


def _step(plugin: Plugin, model: nn.Module, x: torch.Tensor, y: torch.Tensor, forward: nn.Module) -> dict[str, float]:
    """One epoch of one step: the hooks in the training loop's order; returns the epoch metrics."""
    plugin.epoch_begin(0, model)
    logits = forward(x)
    terms = plugin.loss(x, y, logits)
    for name, value in terms.items():
        if not (isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype == torch.float32):
            raise _fail(plugin, f"loss term {name!r} is not a float32 scalar tensor: {value!r}")
        if not torch.isfinite(value):
            raise _fail(plugin, f"loss term {name!r} is not finite: {float(value)}")
    total = torch.nn.functional.cross_entropy(logits.float(), y) + sum(terms.values())
    total.backward()
    metrics = plugin.epoch_end(0)
    try:  # they go into metrics.jsonl
        json.dumps(metrics, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail(plugin, f"epoch metrics are not finite JSON values: {exc}") from None
    return metrics


def _check_attach_detach(plugin_factory: Callable[[], Plugin], model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         num_classes: int, reference: torch.Tensor) -> str:
    before = _snapshot(model)
    plugin = plugin_factory()
    if not isinstance(plugin, Plugin):
        raise PluginContractError(f"the factory returned {type(plugin).__name__}, not an inspectnet Plugin")
    plugin.attach(model, num_classes=num_classes)
    if plugin.rewrites_weights:  # compared with the model as attach rewrote it
        before["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        _step(plugin, model, x, y, model)
    finally:
        plugin.detach()
        model.zero_grad(set_to_none=True)
    plugin.detach()  # idempotent
    after = _snapshot(model)
    for key in ("modules", "modes", "grad_flags", "hooks"):
        if after[key] != before[key]:
            raise _fail(plugin, f"detach leaves the model's {key.replace('_', ' ')} changed")
    changed = [k for k, v in after["state"].items() if not torch.equal(v, before["state"][k])]
    if changed or after["state"].keys() != before["state"].keys():
        raise _fail(plugin, f"detach leaves the model's state changed: {', '.join(changed) or 'its keys'}")
    if not plugin.rewrites_weights and not torch.equal(_outputs(model, x), reference):
        raise _fail(plugin, "after detach the model's outputs differ from those before attach")
    return "attach/detach"


def _check_state_round_trip(plugin_factory: Callable[[], Plugin], model: nn.Module, x: torch.Tensor,
                            y: torch.Tensor, num_classes: int) -> None:
    work = copy.deepcopy(model)
    plugin = plugin_factory().attach(work, num_classes=num_classes)
    try:
        _step(plugin, work, x, y, work)
        state = plugin.state_dict()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        try:
            loaded = torch.load(buffer, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure here is the clause broken
            raise _fail(plugin, f"state_dict is not weights_only-loadable: {exc}") from None
    finally:
        plugin.detach()
    fresh = plugin_factory().attach(copy.deepcopy(model), num_classes=num_classes)
    try:
        fresh.load_state_dict(loaded)
        if not _same(fresh.state_dict(), state):
            raise _fail(plugin, "a fresh plugin that loads state_dict() does not return the same state")
    finally:
        fresh.detach()


def _same(a: Any, b: Any) -> bool:
    """Exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return a == b


def _check_distributed(plugin_factory: Callable[[], Plugin], model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       num_classes: int) -> None:
    """A step through one-process DDP (gloo) gives the plain step's gradients."""
    grads = []
    for wrap in (False, True):
        work = copy.deepcopy(model)
        plugin = plugin_factory().attach(work, num_classes=num_classes)
        try:
            torch.manual_seed(0)  # stochastic plugins draw the same numbers on both paths
            if wrap:
                with _one_process_group():
                    ddp = nn.parallel.DistributedDataParallel(work)
                    _step(plugin, work, x, y, ddp)
            else:
                _step(plugin, work, x, y, work)
        finally:
            plugin.detach()
        grads.append({n: p.grad for n, p in work.named_parameters() if p.grad is not None})
    plain, wrapped = grads
    if plain.keys() != wrapped.keys() or any(not torch.allclose(plain[n], wrapped[n], rtol=1e-5, atol=1e-7)
                                             for n in plain):
        raise _fail(plugin, "under DistributedDataParallel the gradients differ from the plain training step's")


class _one_process_group:
    """A gloo process group of one rank for the duration of a ``with`` block."""

    def __enter__(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        torch.distributed.init_process_group("gloo", init_method=f"file://{os.path.join(self._dir.name, 'store')}",
                                             rank=0, world_size=1)

    def __exit__(self, *exc: object) -> None:
        torch.distributed.destroy_process_group()
        self._dir.cleanup()
