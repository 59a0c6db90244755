"""The fine-tuning plugin contract and its registry (entry-point group ``inspectnet.plugins``).

A plugin is a class with a ``name``, a ``paper``, typed hyperparameters with the paper's defaults,
and five duties: ``attach`` to a model (hooks on named layers, possibly replacing a layer's
output), contribute loss terms per step (``loss``), keep state that goes into checkpoints
(``state_dict``), report metrics per epoch (``epoch_end``) and ``detach`` leaving the model
exactly as before. First-party plugins live in the top-level ``plugins/`` folder (installed as
``inspectnet_plugins``) and are registered through the same entry points as third-party ones:

    [project.entry-points."inspectnet.plugins"]
    myreg = "mypackage.module:MyPlugin"

>>> spec = parse_plugin_spec("ebp:K=25,lam=1e-3,layer=layer4")
>>> spec.name, spec.values
('ebp', {'K': '25', 'lam': '1e-3', 'layer': 'layer4'})
>>> make_plugin("ebp:K=10").hp["K"]
10
"""

import dataclasses
import difflib
import importlib.metadata
from typing import Any

import torch

from inspectnet.core.errors import InspectnetError
from inspectnet.plugin_base import HParam, Plugin, plugin_parameter_groups

__all__ = ["ENTRY_POINT_GROUP", "HParam", "Plugin", "PluginSpec", "all_reduce_sum", "available_plugins",
           "describe_plugins", "get_plugin", "make_plugin", "parse_plugin_spec", "plugin_names",
           "plugin_parameter_groups", "register_plugin"]

ENTRY_POINT_GROUP = "inspectnet.plugins"


@dataclasses.dataclass(frozen=True)
class PluginSpec:
    """A parsed ``name:k=v,k=v`` string (values stay strings until the plugin types them)."""

    name: str
    values: dict[str, str]


def parse_plugin_spec(text: str) -> PluginSpec:
    """Split ``"ebp:K=25,lam=1e-3,layer=layer4"``; a value may contain ``|`` lists or globs.

    Args:
        text: the spec.

    Returns:
        The name and the values (strings until the plugin types them).

    Raises:
        InspectnetError: the text is not ``NAME`` or ``NAME:key=value,...``.

    Examples:
        >>> parse_plugin_spec("ebp:K=25,lam=1e-3")
        PluginSpec(name='ebp', values={'K': '25', 'lam': '1e-3'})
    """
    name, _, rest = text.strip().partition(":")
    if not name:
        raise InspectnetError(f"--plugin {text!r}: expected NAME or NAME:key=value,... (e.g. ebp:K=25,lam=1e-3)")
    values: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise InspectnetError(f"--plugin {text!r}: {item!r} is not key=value")
        values[key.strip()] = value.strip()
    return PluginSpec(name.strip(), values)


_REGISTERED: dict[str, type[Plugin]] = {}


def register_plugin(cls: type[Plugin]) -> type[Plugin]:
    """Register a plugin class in this process (decorator); entry points are the persistent way.

    Args:
        cls: a :class:`Plugin` subclass with a ``name``.

    Returns:
        ``cls``.

    Raises:
        InspectnetError: ``cls`` is not a Plugin subclass with a name.
    """
    if not (isinstance(cls, type) and issubclass(cls, Plugin)) or not cls.name:
        raise InspectnetError(f"{cls!r} is not a Plugin subclass with a name")
    _REGISTERED[cls.name] = cls
    return cls


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Name -> entry point of the ``inspectnet.plugins`` group, nothing imported (the first of a name wins)."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def plugin_names() -> list[str]:
    """Every plugin name, registered in-process or through an entry point, without importing any plugin.

    Returns:
        The names, sorted.

    Examples:
        >>> "ebp" in plugin_names()
        True
    """
    return sorted({*_entry_points(), *_REGISTERED})


def _load(name: str, ep: importlib.metadata.EntryPoint) -> type[Plugin]:
    """The class behind one entry point; whatever goes wrong is one line naming the plugin."""
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - a third-party module may raise anything on import
        raise InspectnetError(f"plugin {name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise InspectnetError(f"plugin {name!r} ({ep.value}) is not an inspectnet Plugin class")
    return cls


def get_plugin(name: str) -> type[Plugin]:
    """The plugin class called ``name``: only its own entry point is imported.

    A broken plugin so breaks only its own lookup.

    Args:
        name: the plugin's name (``ebp``, ``kwta``, ...).

    Returns:
        The :class:`Plugin` subclass.

    Raises:
        InspectnetError: no plugin has that name, or it fails to load.

    Examples:
        >>> get_plugin("kwta").name
        'kwta'
    """
    if name in _REGISTERED:
        return _REGISTERED[name]
    eps = _entry_points()
    if name not in eps:
        names = plugin_names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise InspectnetError(f"unknown plugin {name!r}{hint}; available: {', '.join(names)}")
    return _load(name, eps[name])


def available_plugins(errors: dict[str, str] | None = None) -> dict[str, type[Plugin]]:
    """Every plugin that loads: those registered in-process and every entry point of ``inspectnet.plugins``.

    A plugin that fails to load is left out (its one-line reason goes into ``errors`` when given);
    the others are unaffected.

    Args:
        errors: filled with name -> why that plugin could not be loaded.

    Returns:
        name -> plugin class, sorted by name.
    """
    found: dict[str, type[Plugin]] = {}
    for name in plugin_names():
        try:
            found[name] = get_plugin(name)
        except InspectnetError as exc:
            if errors is not None:
                errors[name] = str(exc)
    return found


def make_plugin(spec: "str | PluginSpec | Plugin") -> Plugin:
    """A plugin instance from a spec string, a parsed spec, or an instance (returned as is).

    Args:
        spec: the plugin.

    Returns:
        The instance.

    Examples:
        >>> make_plugin("kwta").spec().startswith("kwta:")
        True
    """
    if isinstance(spec, Plugin):
        return spec
    if isinstance(spec, str):
        spec = parse_plugin_spec(spec)
    return get_plugin(spec.name)(**spec.values)


def describe_plugins(errors: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Name, summary, paper and hyperparameters (with defaults) of every plugin that loads.

    Args:
        errors: filled with name -> why that plugin could not be loaded (see :func:`available_plugins`).

    Returns:
        One description per plugin (see :meth:`Plugin.describe`).
    """
    return [cls.describe() for cls in available_plugins(errors).values()]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks of an initialised process group, in place (a no-op in one process).

    Plugins call it on statistics that are sums (EBP's per-class accumulators) so every rank
    sees the same values as one process given the whole global batch.

    Args:
        t: the tensor.

    Returns:
        ``t``, now the sum.
    """
    from inspectnet.core.distributed import all_reduce

    return all_reduce(t, "sum")
