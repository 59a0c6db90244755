"""Data specs to labelled datasets with a model's own preprocessing.

A data spec is the path of an image folder (one sub-folder per class) or a built-in source:
``mnist5k[:train|:test]``, ``digits[:train|:test]``, ``shapes[:train|:test][?n=2000&seed=0&task=square]``,
``photos[:train|:test][?n=200&seed=0]`` (labelled crops of real photos, ImageNet classes),
``photos100[:train|:test][?labels=sure|all&crops=10&seed=0]`` (crops of 100 real photos, one ImageNet class each),
``samples`` (unlabelled photos).

The dataset classes are imported on first use (PEP 562), so :mod:`inspectnet.data.labels` stays
importable without torch (``inspectnet run``).
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from inspectnet.core.errors import InspectnetError

if TYPE_CHECKING:
    from inspectnet.data.datasets import ImageDataset

_LAZY = {name: "inspectnet.data.datasets"
         for name in ("UNLABELLED", "ArrayDataset", "FilesDataset", "FolderDataset", "ImageDataset")}

__all__ = ["UNLABELLED", "ArrayDataset", "FilesDataset", "FolderDataset", "ImageDataset", "check_data_spec",
           "load_data", "parse_data_spec"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'inspectnet.data' has no attribute {name!r}")


def parse_data_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """Split ``NAME[:SPLIT][?k=v&...]`` into its parts.

    Args:
        spec: a data spec.

    Returns:
        ``(name, split or None, {parameter: value})``, the values as written.

    Raises:
        InspectnetError: the split is neither ``train`` nor ``test``, or a parameter is not ``key=value``.

    Examples:
        >>> parse_data_spec("shapes:train?n=100&seed=3")
        ('shapes', 'train', {'n': '100', 'seed': '3'})
    """
    head, _, query = spec.partition("?")
    name, _, split = head.partition(":")
    params = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq:
            raise InspectnetError(f"data spec {spec!r}: parameter {part!r} is not key=value")
        params[key] = value
    if split not in ("", "train", "test"):
        raise InspectnetError(f"data spec {spec!r}: split {split!r} is unknown; expected train or test")
    return name, split or None, params


def check_data_spec(spec: str) -> None:
    """Refuse a spec that names neither a folder nor a built-in source, without loading anything.

    Args:
        spec: a data spec (a folder, or ``NAME[:SPLIT][?k=v&...]`` of a built-in source).

    Raises:
        InspectnetError: the spec is neither (the message suggests the closest source name).

    Examples:
        >>> check_data_spec("digts")
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: data 'digts' is neither a folder nor a built-in source (...); did you ...
    """
    from inspectnet.data.sources import SOURCES

    if Path(spec).is_dir():
        return
    name, _, _ = parse_data_spec(spec)
    if name not in SOURCES:
        import difflib

        close = difflib.get_close_matches(name, list(SOURCES), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise InspectnetError(f"data {spec!r} is neither a folder nor a built-in source "
                              f"({', '.join(SOURCES)}){hint}")


def load_data(spec: str, transform: Callable | None = None, *, skip_bad: bool = False,
              model_classes: Sequence[str] | None = None, class_map: dict[str, int | str] | None = None,
              strict: bool = True) -> "ImageDataset":
    """Resolve a data spec to an :class:`ImageDataset` whose items are ``(transform(image), label)``.

    With ``model_classes`` the labels are mapped onto that model's classes (by WordNet id, name,
    or ``class_map``; see :mod:`inspectnet.data.labels`, also for ``strict``), never taken in
    folder order silently.

    Args:
        spec: an image folder (``ROOT/CLASS/IMAGE``) or a built-in source (``NAME[:SPLIT][?k=v&...]``).
        transform: applied to each PIL image when an item is read.
        skip_bad: leave undecodable files of a folder out (listed in ``skipped``) instead of failing.
        model_classes: a model's class names to map the labels onto.
        class_map: data class -> model class (index or name), for classes no name or id matches.
        strict: refuse data classes that match no model class (see
            :func:`~inspectnet.data.labels.align_classes`).

    Returns:
        The dataset.

    Examples:
        >>> ds = load_data("digits:test"); len(ds), ds.class_names[:3]
        (359, ['0', '1', '2'])
    """
    from inspectnet.data.datasets import FolderDataset

    if Path(spec).is_dir():
        ds = FolderDataset(spec, transform, skip_bad=skip_bad)
    else:
        ds = _builtin(spec)
        ds.transform = transform
    return ds if model_classes is None else ds.aligned_to(model_classes, class_map=class_map, strict=strict)


def _builtin(spec: str) -> "ImageDataset":
    from inspectnet.data.sources import SOURCES

    check_data_spec(spec)
    name, split, params = parse_data_spec(spec)
    try:
        return SOURCES[name](spec, split, params)
    except (TypeError, ValueError) as exc:
        raise InspectnetError(f"data spec {spec!r}: {exc}") from exc
