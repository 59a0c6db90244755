"""Checks of an exported file's inspectnet metadata against its graph, made when the file is opened.

A file whose metadata was edited (or damaged) after export would otherwise run with wrong numbers:
a zero ``std`` divides by zero, too few class names are filled in as ``class_3``..., an input size
other than the graph's fails inside ONNX Runtime. Each problem is refused in one line naming the
metadata key and what was expected. This module must never import torch (``inspectnet run``).
"""

import math
from pathlib import Path
from typing import Any

from inspectnet.core.errors import InspectnetError

RESAMPLE_NAMES = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def check_metadata(path: str | Path, meta: dict[str, Any], inputs: list[Any], logits_shape: list[Any]) -> None:
    """Refuse metadata that disagrees with itself or with the graph.

    Args:
        path: the ONNX file (named in the message).
        meta: ``{"preprocessing", "class_names", "model"}`` as read from the file.
        inputs: the graph's input shape (ints for static sizes, anything else for dynamic ones).
        logits_shape: the shape of the ``logits`` output.

    Raises:
        InspectnetError: a metadata key is malformed or disagrees with the graph (the message names the
            first bad key and what was expected).

    Examples:
        >>> pre = {"input_size": [1, 4, 4], "mean": [0.5], "std": [0.0], "crop_pct": 1.0}
        >>> check_metadata("m.onnx", {"preprocessing": pre, "class_names": ["a"], "model": {}}, ["N", 1, 4, 4], ["N", 1])
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: ONNX file m.onnx: metadata inspectnet.preprocessing std ...
    """
    names, info = meta["class_names"], meta["model"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _bad(path, "inspectnet.class_names", "is not a list of names")
    classes = logits_shape[-1] if logits_shape else None
    if isinstance(classes, int) and len(names) != classes:
        raise _bad(path, "inspectnet.class_names", f"lists {len(names)} names but the graph has {classes} outputs")
    if not isinstance(info, dict):
        raise _bad(path, "inspectnet.model", "is not a JSON object")
    if info.get("input_kind", "image") == "image":
        _check_preprocessing(path, meta["preprocessing"], inputs)


def _check_preprocessing(path: str | Path, pre: Any, inputs: list[Any]) -> None:
    key = "inspectnet.preprocessing"
    if not isinstance(pre, dict):
        raise _bad(path, key, "is not a JSON object")
    missing = [k for k in ("input_size", "mean", "std") if k not in pre]
    if missing:
        raise _bad(path, key, f"lacks {', '.join(missing)}")
    size = pre["input_size"]
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size)):
        raise _bad(path, f"{key} input_size", f"is {size!r}; expected [channels, height, width] of positive ints")
    graph = list(inputs[1:4]) if len(inputs) == 4 else None
    if graph is not None and any(isinstance(g, int) and g != v for g, v in zip(graph, size)):
        raise _bad(path, f"{key} input_size", f"is {size} but the graph takes {graph}")
    for name in ("mean", "std"):
        values = pre[name]
        if not (isinstance(values, list) and all(_finite(v) for v in values)) or len(values) != size[0]:
            raise _bad(path, f"{key} {name}", f"is {values!r}; expected {size[0]} finite numbers (one per channel)")
    if any(v == 0 for v in pre["std"]):
        raise _bad(path, f"{key} std", f"is {pre['std']}; a zero std divides by zero")
    crop = pre.get("crop_pct")
    if crop is not None and not (_finite(crop) and 0 < crop <= 1):
        raise _bad(path, f"{key} crop_pct", f"is {crop!r}; expected a number in (0, 1]")
    interp = pre.get("interpolation")
    if interp is not None and interp not in RESAMPLE_NAMES:
        raise _bad(path, f"{key} interpolation", f"is {interp!r}; expected one of {', '.join(RESAMPLE_NAMES)}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bad(path: str | Path, key: str, why: str) -> InspectnetError:
    return InspectnetError(f"ONNX file {path}: metadata {key} {why} (edited or damaged after export; export it again)")
