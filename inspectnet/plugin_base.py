"""The fine-tuning plugin contract: the :class:`Plugin` base class and its typed hyperparameters (:class:`HParam`).

Also the optimizer groups of a model trained with plugins (:func:`plugin_parameter_groups`).

Third-party plugins import these from :mod:`inspectnet.plugins`, which also holds the registry.
"""

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from inspectnet.core.errors import InspectnetError
from inspectnet.models.layers import first_tensor, following_normalisation, resolve_layers
from inspectnet.training.hooks import TrainHooks

_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}
_AFFINE = (nn.modules.conv._ConvNd, nn.Linear)  # output scale proportional to the weights' scale


@dataclasses.dataclass(frozen=True)
class HParam:
    """One typed hyperparameter of a plugin.

    ``type`` is int, float, str or bool; ``low``/``high`` bound numbers (inclusive), ``choices``
    restricts strings; ``default`` is the paper's value.
    """

    name: str
    type: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None

    def parse(self, plugin: str, raw: Any) -> Any:
        """Convert ``raw`` (a string from the command line, or a Python value) and check its range.

        Args:
            plugin: the plugin's name (for messages).
            raw: the value given.

        Returns:
            The typed value.

        Raises:
            InspectnetError: the value is not of the type, not finite, out of range, or not one of the choices.

        Examples:
            >>> HParam("K", "int", 25, "top filters", low=1).parse("ebp", "10")
            10
        """
        try:
            if self.type == "bool":
                value = raw if isinstance(raw, bool) else _parse_bool(str(raw))
            elif self.type == "int" and isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            else:
                value = _TYPES[self.type](raw)
        except (ValueError, TypeError):
            raise InspectnetError(f"plugin {plugin}: {self.name}={raw!r} is not a valid {self.type}") from None
        if self.type == "float" and not math.isfinite(value):  # nan passes every range check
            raise InspectnetError(f"plugin {plugin}: {self.name}={value} is not a finite number")
        if self.low is not None and value < self.low:
            raise InspectnetError(f"plugin {plugin}: {self.name}={value} is below its minimum {self.low}")
        if self.high is not None and value > self.high:
            raise InspectnetError(f"plugin {plugin}: {self.name}={value} is above its maximum {self.high}")
        if self.choices is not None and value not in self.choices:
            raise InspectnetError(f"plugin {plugin}: {self.name}={value!r} is not one of "
                                  f"{', '.join(self.choices)}")
        return value

    def describe(self) -> dict[str, Any]:
        """The hyperparameter as ``inspectnet plugins`` lists it.

        Returns:
            ``{"name", "type", "default", "help"}`` and ``low``, ``high``, ``choices`` where set.
        """
        d = {"name": self.name, "type": self.type, "default": self.default, "help": self.help}
        for key in ("low", "high", "choices"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key) if key != "choices" else list(self.choices)
        return d


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(s)


class Plugin(TrainHooks):
    """Base class of fine-tuning plugins; subclasses set the class attributes and override hooks.

    A plugin implements the training-hook protocol (:class:`~inspectnet.training.hooks.TrainHooks`,
    one signature per hook), so the training loop runs one as it runs any hooks. Lifecycle:
    ``__init__(**hyperparameters)`` -> ``attach(model, num_classes=)`` -> per epoch
    ``epoch_begin(epoch, model)``, per step ``loss(x, y, logits)``, ``epoch_end(epoch)`` ->
    ``detach()``. Loss terms are means over the minibatch (so data-parallel gradient averaging is
    exact) and are computed in float32 even under mixed precision.
    :func:`inspectnet.testing.check_plugin` checks the contract.

    Args:
        **values: hyperparameters by name (the others take their defaults).

    Raises:
        InspectnetError: a hyperparameter is unknown or its value is refused (see :meth:`HParam.parse`).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    hparams: ClassVar[tuple[HParam, ...]] = ()
    needs_labels: ClassVar[bool] = False
    alters_forward: ClassVar[bool] = False  # inserts an operation (k-WTA, SAN, ...) into the forward pass
    # attach rewrites weights as the method prescribes (e.g. sparse incoming weights) and detach keeps them:
    # the trained model is the one that ran
    rewrites_weights: ClassVar[bool] = False

    def __init__(self, **values: Any):
        known = {h.name: h for h in self.hparams}
        unknown = [k for k in values if k not in known]
        if unknown:
            valid = ", ".join(known) or "(none)"
            raise InspectnetError(f"plugin {self.name}: unknown hyperparameter {unknown[0]!r}; valid: {valid}")
        self.hp: dict[str, Any] = {h.name: h.parse(self.name, values.get(h.name, h.default)) for h in self.hparams}
        self.model: nn.Module | None = None
        self.num_classes = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def attach(self, model: nn.Module, *, num_classes: int, head_name: str | None = None) -> "Plugin":
        """Hook into ``model``; a failure part-way removes whatever was already added.

        Args:
            model: the model to fine-tune.
            num_classes: its classes.
            head_name: its classifier's dotted name (found when None).

        Returns:
            The plugin itself.

        Raises:
            InspectnetError: the plugin is already attached (or :meth:`setup` refuses the model).
        """
        if self.model is not None:
            raise InspectnetError(f"plugin {self.name} is already attached to a model")
        self.model, self.num_classes, self.head_name = model, num_classes, head_name
        try:
            self.setup(model)
        except BaseException:
            self.detach()
            raise
        return self

    def setup(self, model: nn.Module) -> None:
        """Subclass hook: resolve layers, register hooks (through :meth:`hook`), allocate state.

        Args:
            model: the model being attached to.
        """

    def detach(self) -> None:
        """Remove every hook; the model is exactly as before ``attach`` (idempotent)."""
        while self._handles:
            self._handles.pop().remove()
        self.teardown()
        self.model = None

    def teardown(self) -> None:
        """Subclass hook: undo anything not done through :meth:`hook`."""

    # -- training hooks besides loss, epoch_begin/epoch_end and state_dict (TrainHooks' defaults) ------
    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """The model's trainable parameters with ``weight_decay``, and the rest without it.

        Without decay go those this plugin regularizes itself and the plugin's own parameters.

        Args:
            model: the model.
            weight_decay: the decay of the ordinary parameters.

        Returns:
            The groups (see :func:`plugin_parameter_groups`).
        """
        return plugin_parameter_groups([self], model, weight_decay)

    def identity(self) -> dict[str, Any]:
        """The plugin's canonical spec: a checkpoint of other hyperparameters is not resumed.

        Returns:
            ``{"plugins": [spec]}``.
        """
        return {"plugins": [self.spec()]}

    def decay_exempt(self) -> list[nn.Parameter]:
        """Parameters this plugin regularizes itself, so the optimizer must not weight-decay them.

        Returns:
            The parameters (none here).
        """
        return []

    def parameters(self) -> list[nn.Parameter]:
        """The plugin's own trainable parameters (e.g. CGL's sigmoid scale), optimized with the model.

        They get no weight decay; their values belong in :meth:`state_dict`.

        Returns:
            The parameters (none here).
        """
        return []

    # -- helpers for subclasses ------------------------------------------------------------------
    def layer(self, spec: str) -> str:
        """Exactly one canonical layer name for ``spec`` (errors name the plugin).

        Args:
            spec: a layer spec (name, glob or alias).

        Returns:
            The dotted name.

        Raises:
            InspectnetError: the spec matches no layer, or several.
        """
        names = self.layers(spec)
        if len(names) != 1:
            raise InspectnetError(f"plugin {self.name}: layer={spec!r} matches {len(names)} layers; name one")
        return names[0]

    def activation_layer(self, spec: str, *, penalty: bool) -> str:
        """:meth:`layer` for a plugin that acts on a layer's activations.

        The papers use a post-activation output; the default ``last_stage`` is one. A convolution or linear
        layer followed by a normalisation is refused for a ``penalty`` (rescaling its weights rescales the
        penalty and leaves the model's function unchanged, so the penalty would only shrink weights) and
        warned about otherwise (the normalisation shifts the zeros an activation makes, so nothing
        downstream is sparse).

        Args:
            spec: a layer spec.
            penalty: the plugin penalises the layer's activations (rather than changing them).

        Returns:
            The dotted name.

        Raises:
            InspectnetError: a penalty on a layer whose output a normalisation rescales (or a bad spec).
        """
        name = self.layer(spec)
        module = self.model.get_submodule(name)
        norm = following_normalisation(self.model, name) if isinstance(module, _AFFINE) else None
        if norm is None:
            return name
        where = f"plugin {self.name}: layer {name!r} is a {type(module).__name__} followed by {norm!r}"
        if penalty:
            raise InspectnetError(f"{where}: the normalisation undoes the scale of its output, so scaling its weights "
                                  f"down removes the penalty without changing the model; name a post-activation "
                                  f"output (the default last_stage, or e.g. the block containing it)")
        warnings.warn(f"{where}: the normalisation shifts the zeros this activation makes, so the layer's output "
                      f"downstream is not sparse; a post-activation output (the default last_stage) avoids this",
                      stacklevel=2)
        return name

    def layers(self, spec: str | Sequence[str]) -> list[str]:
        """Canonical layer names for ``spec`` (errors name the plugin).

        Args:
            spec: layer specs, or one comma-separated string of them.

        Returns:
            The dotted names.

        Raises:
            InspectnetError: a spec matches no layer, or names ``pre_logits``, which is not a module.
        """
        try:
            names = resolve_layers(self.model, spec, head_name=self.head_name)
        except InspectnetError as exc:
            raise InspectnetError(f"plugin {self.name}: {exc}") from None
        if "pre_logits" in names:
            raise InspectnetError(f"plugin {self.name}: pre_logits is not a module; name a layer instead")
        return names

    def unit_maps(self, layer: str, out: torch.Tensor) -> torch.Tensor:
        """``out`` (the output of ``layer``) with its units on axis 1: (B, C, h, w) maps or (B, C) vectors.

        Channels-last maps (Swin) are permuted, tokens put on their patch grid without the class,
        distillation and register tokens (:func:`inspectnet.models.layout.layer_layout`), so a
        per-unit statistic averages each channel over patch positions only.

        Args:
            layer: the hooked layer's name.
            out: its output.

        Returns:
            The maps or vectors (a view where possible).

        Examples:
            >>> Plugin().unit_maps("x", torch.zeros(2, 5)).shape      # doctest: +SKIP
            torch.Size([2, 5])
        """
        from inspectnet.models.layout import layer_layout

        return layer_layout(self.model, layer, out).maps(out)

    def hook(self, layer: str, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> None:
        """Forward hook on ``layer``, removed by :meth:`detach`.

        Args:
            layer: the dotted name.
            fn: called with the layer's output; may return a replacement output (inserting an operation
                into the forward pass reversibly) or None to only observe.
        """
        module = self.model.get_submodule(layer)

        def _hook(_m: nn.Module, _i: Any, out: Any) -> Any:
            t = first_tensor(out)
            new = fn(t)
            if new is None or isinstance(out, torch.Tensor):
                return new
            return (new, *out[1:]) if isinstance(out, tuple) else new

        self._handles.append(module.register_forward_hook(_hook))

    def pre_hook(self, layer: str, fn: Callable[[torch.Tensor], None]) -> None:
        """Observe the input of ``layer`` (e.g. a conv's pre-activation through a following BN).

        Args:
            layer: the dotted name.
            fn: called with the layer's input.
        """
        module = self.model.get_submodule(layer)
        self._handles.append(module.register_forward_pre_hook(lambda _m, args: fn(args[0])))

    def spec(self) -> str:
        """Canonical ``name:k=v,...`` string (all hyperparameters, sorted), used to key resumption.

        Returns:
            The spec.
        """
        return f"{self.name}:" + ",".join(f"{k}={self.hp[k]}" for k in sorted(self.hp))

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The plugin as ``inspectnet plugins`` lists it.

        Returns:
            ``{"name", "summary", "paper", "needs_labels", "alters_forward", "hyperparameters"}``.
        """
        return {"name": cls.name, "summary": cls.summary, "paper": cls.paper, "needs_labels": cls.needs_labels,
                "alters_forward": cls.alters_forward,
                "hyperparameters": [h.describe() for h in cls.hparams]}


def plugin_parameter_groups(plugins: Sequence[Plugin], model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups for ``model`` trained with ``plugins``.

    Weight decay goes on the model's trainable parameters except those a plugin regularizes itself
    (:meth:`Plugin.decay_exempt`); none on those and on the plugins' own parameters (e.g. CGL's block
    norm replaces weight decay there).

    Args:
        plugins: the attached plugins.
        model: the model being trained.
        weight_decay: the decay of the ordinary parameters.

    Returns:
        One group, or two when some parameters go without decay.

    Examples:
        >>> len(plugin_parameter_groups([], nn.Linear(2, 2), 1e-4))
        1
    """
    exempt = {id(p) for plugin in plugins for p in plugin.decay_exempt()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in exempt], "weight_decay": weight_decay}]
    own = [p for p in params if id(p) in exempt] + [p for plugin in plugins for p in plugin.parameters()]
    if own:
        groups.append({"params": own, "weight_decay": 0.0})
    return groups
