"""Fine-tuning with interpretability plugins on top of :func:`inspectnet.training.loop.train`.

Plugins (EBP, CGL, SAN, k-WTA, ...) are attached to the model for the run and detached at the
end; their loss terms, per-epoch metrics and checkpointed state flow through
:class:`PluginHooks`. Freezing options: ``freeze_bn`` keeps every BatchNorm in eval mode (running
statistics and affine parameters fixed), ``freeze_until`` freezes all parameters of the modules up
to and including that layer (in definition order). Resumption is keyed by the plugin specs and
freezing options, so a checkpoint of another plugin set is refused.

>>> from inspectnet import load_model, load_data
>>> zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16)
>>> ds = load_data("digits:train", zm.transform())
>>> r = finetune(zm, ds, getfixture("tmp_path"), plugins=["ebp:K=4,layer=layer4"],
...              config=TrainConfig(epochs=1, limit=64, batch_size=32))
>>> sorted(r.history[0])[:3]
['ce', 'ebp', 'ebp/distinct_elites']
"""

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inspectnet.core.devices import resolve_device
from inspectnet.core.distributed import world
from inspectnet.core.errors import InspectnetError
from inspectnet.core.results import Result
from inspectnet.data import ImageDataset
from inspectnet.models.layers import model_state, resolve_layers
from inspectnet.models.zoo import ZooModel
from inspectnet.plugins import Plugin, PluginSpec, make_plugin, plugin_parameter_groups
from inspectnet.training.loop import CHECKPOINT, TrainConfig, TrainHooks, train

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class PluginHooks(TrainHooks):
    """Adapter from a list of plugins to the training loop's hooks.

    Args:
        plugins: the attached plugins (two of one kind are keyed ``NAME0``, ``NAME1``, ...).
        freeze_bn: keep every BatchNorm in eval mode while training.
        freeze_until: freeze every module up to and including this layer.
    """

    def __init__(self, plugins: Sequence[Plugin], *, freeze_bn: bool = False, freeze_until: str | None = None):
        self.plugins = list(plugins)
        names = [p.name for p in self.plugins]
        dup = {n for n in names if names.count(n) > 1}
        self.keys = [f"{p.name}{i}" if p.name in dup else p.name for i, p in enumerate(self.plugins)]
        self.freeze_bn = freeze_bn
        self.freeze_until = freeze_until

    def loss(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every plugin's loss terms, keyed ``PLUGIN/term`` (the term's own name with one plugin).

        Args:
            x: the batch's inputs.
            y: its labels.
            logits: the model's logits on it.

        Returns:
            Term name -> float32 scalar.
        """
        terms: dict[str, torch.Tensor] = {}
        for key, plugin in zip(self.keys, self.plugins):
            for name, value in plugin.loss(x, y, logits).items():
                terms[name if len(self.plugins) == 1 or name.startswith(key) else f"{key}/{name}"] = value.float()
        return terms

    def epoch_begin(self, epoch: int, model: nn.Module) -> None:
        """Freeze BatchNorms if asked, then let every plugin start its epoch.

        Args:
            epoch: the epoch (from 0).
            model: the model, just put in train mode.
        """
        if self.freeze_bn:
            for m in model.modules():
                if isinstance(m, _BN):
                    m.eval()
        for plugin in self.plugins:
            plugin.epoch_begin(epoch, model)

    def epoch_end(self, epoch: int) -> dict[str, float]:
        """Every plugin's epoch metrics, keyed ``PLUGIN/metric``.

        Args:
            epoch: the epoch (from 0).

        Returns:
            Metric name -> value.
        """
        out: dict[str, float] = {}
        for key, plugin in zip(self.keys, self.plugins):
            out.update({f"{key}/{k}": v for k, v in plugin.epoch_end(epoch).items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        """Every plugin's state, keyed by plugin.

        Returns:
            Plugin key -> its state.
        """
        return {key: plugin.state_dict() for key, plugin in zip(self.keys, self.plugins)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every plugin's state from :meth:`state_dict`.

        Args:
            state: plugin key -> its state.
        """
        for key, plugin in zip(self.keys, self.plugins):
            plugin.load_state_dict(state.get(key, {}))

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups, with the plugins' own parameters and weight decay.

        Args:
            model: the model.
            weight_decay: the default weight decay.

        Returns:
            The groups.
        """
        return plugin_parameter_groups(self.plugins, model, weight_decay)

    def identity(self) -> dict[str, Any]:
        """What keys resumption: the plugin specs and the freezing options.

        Returns:
            ``{"plugins", "freeze_bn", "freeze_until"}``.
        """
        return {"plugins": [p.spec() for p in self.plugins], "freeze_bn": self.freeze_bn,
                "freeze_until": self.freeze_until}


@dataclasses.dataclass(frozen=True)
class FinetuneResult(Result):
    """Per-epoch metrics of a fine-tuning run and the plugins (canonical specs) it used."""

    out: str
    plugins: list[str]
    history: list[dict[str, Any]]
    frozen_parameters: int
    trainable_parameters: int


def freeze_until(model: nn.Module, layer: str) -> int:
    """Set ``requires_grad=False`` on the parameters of every module defined up to and including ``layer``.

    Args:
        model: changed in place.
        layer: a dotted name, glob or alias.

    Returns:
        The number of frozen parameter tensors.

    Examples:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)); freeze_until(m, "0"), m[1].weight.requires_grad
        (2, True)
    """
    name = resolve_layers(model, layer)[-1]
    names = [n for n, _ in model.named_modules() if n]
    stop = names.index(name)
    frozen = 0
    for n in names[: stop + 1] + [n for n in names[stop + 1:] if n.startswith(name + ".")]:
        for p in model.get_submodule(n).parameters(recurse=False):
            if p.requires_grad:
                p.requires_grad_(False)
                frozen += 1
    return frozen


def finetune(zm: ZooModel, train_data: ImageDataset, out: str | Path,
             plugins: Sequence[str | PluginSpec | Plugin] = (), config: TrainConfig = TrainConfig(), *,
             eval_data: ImageDataset | None = None, device: str = "auto", freeze_bn: bool = False,
             freeze_until_layer: str | None = None, amp: bool | None = None,
             stop_after: int | None = None, keep_attached: bool = False,
             log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune ``zm`` with ``plugins``; writes the model folder, checkpoint, metrics and ``finetune.json`` to ``out``.

    Re-running with the same arguments resumes bit-for-bit (on CPU). Plugins are detached afterwards and
    the model goes back to its device and train/eval flags, unless ``keep_attached=True``: then
    activation plugins (k-WTA, SAN, ...) stay in the forward pass and the model stays on ``device``
    with them (their state lives there).

    Args:
        zm: the model, trained in place.
        train_data: the training data.
        out: the output folder.
        plugins: spec strings like ``"ebp:K=25,lam=1e-3,layer=layer4"``, specs or instances.
        config: the training configuration.
        eval_data: data evaluated after every epoch.
        device: where to train.
        freeze_bn: keep every BatchNorm in eval mode.
        freeze_until_layer: freeze every module up to and including this layer.
        amp: mixed precision (None: on for CUDA only).
        stop_after: end after that many epochs (as an interruption would).
        keep_attached: leave the plugins attached.
        log: gets the training's start and per-epoch lines (:func:`~inspectnet.training.loop.train`).

    Returns:
        The output folder, the plugins' canonical specs, the per-epoch metrics and the parameter counts.

    Raises:
        InspectnetError: a plugin needs labels and the data has none (or a spec is invalid).
    """
    instances = [make_plugin(p) for p in plugins]
    labels = np.asarray(train_data.labels)
    for plugin in instances:
        if plugin.needs_labels and (len(labels) == 0 or (labels < 0).any()):
            raise InspectnetError(f"plugin {plugin.name} needs labels, but data {train_data.spec!r} has "
                                  f"unlabelled samples")
    dev = resolve_device(device)
    frozen = freeze_until(zm.model, freeze_until_layer) if freeze_until_layer else 0
    restore = contextlib.nullcontext() if keep_attached else model_state(zm.model, device=dev)
    with restore:
        zm.model.to(dev)  # before attaching: plugin parameters are created on the model's device
        history = _train_attached(zm, train_data, out, instances, config, eval_data=eval_data, device=device,
                                  freeze_bn=freeze_bn, freeze_until_layer=freeze_until_layer, amp=amp,
                                  stop_after=stop_after, keep_attached=keep_attached, log=log)
    trainable = sum(1 for p in zm.model.parameters() if p.requires_grad)
    result = FinetuneResult(out=str(out), plugins=[p.spec() for p in instances], history=history,
                            frozen_parameters=frozen, trainable_parameters=trainable)
    if Path(out).is_dir() and world()[1] == 0:
        result.save(Path(out) / "finetune.json")
    return result


def _train_attached(zm: ZooModel, train_data: ImageDataset, out: str | Path, plugins: list[Plugin],
                    config: TrainConfig, *, eval_data: ImageDataset | None, device: str, freeze_bn: bool,
                    freeze_until_layer: str | None, amp: bool | None, stop_after: int | None,
                    keep_attached: bool, log: Callable[[str], None] | None) -> list[dict[str, Any]]:
    """Attach ``plugins``, train, and detach them (always on failure; on success unless ``keep_attached``)."""
    attached: list[Plugin] = []
    try:
        for plugin in plugins:
            attached.append(plugin.attach(zm.model, num_classes=zm.num_classes, head_name=zm.head_name))
        hooks = PluginHooks(plugins, freeze_bn=freeze_bn, freeze_until=freeze_until_layer)
        history = train(zm, train_data, out, config, eval_data=eval_data, device=device, hooks=hooks,
                        stop_after=stop_after, amp=amp, log=log)
    except BaseException:
        for plugin in reversed(attached):
            plugin.detach()
        raise
    if not keep_attached:
        for plugin in reversed(attached):
            plugin.detach()
    return history


def load_finetuned(out: str | Path, *, device: str = "cpu") -> tuple[ZooModel, list[Plugin]]:
    """Load a fine-tuned model folder and re-attach the plugins that alter the forward pass.

    Those are k-WTA, SAN, Duty Cycle, ... (read from ``finetune.json``), so the model computes what was
    trained. Regularizer-only plugins (EBP, CGL, EASR) change nothing at inference and are not attached.

    Args:
        out: the folder ``finetune`` wrote.
        device: where to load the model.

    Returns:
        ``(model, attached plugins)``; ``plugin.detach()`` removes a plugin.

    Raises:
        InspectnetError: the folder has no ``finetune.json``.
    """
    from inspectnet.models.zoo import load_model

    out = Path(out)
    zm = load_model(str(out))
    zm.model.to(resolve_device(device))
    record = out / "finetune.json"
    if not record.is_file():
        raise InspectnetError(f"{out} has no finetune.json; expected a folder written by `inspectnet finetune`")
    plugins = [make_plugin(spec) for spec in FinetuneResult.load(record).plugins]
    hooks = PluginHooks(plugins)
    ckpt = out / CHECKPOINT
    states = torch.load(ckpt, map_location="cpu", weights_only=True)["hooks"] if ckpt.is_file() else {}
    attached = []
    for key, plugin in zip(hooks.keys, plugins):
        if plugin.alters_forward:
            attached.append(plugin.attach(zm.model, num_classes=zm.num_classes, head_name=zm.head_name))
            plugin.load_state_dict(states.get(key, {}))  # e.g. Duty Cycle's duty cycles
    return zm, attached
