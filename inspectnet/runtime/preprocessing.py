"""Pictures into model inputs the way timm's evaluation transform makes them, and image files gathered from paths.

This module must never import torch: ``inspectnet run`` relies on it for a light, fast start.
"""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from inspectnet.core.errors import InspectnetError
from inspectnet.core.images import open_image, to_8bit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
             "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


def preprocess(image: Image.Image, config: dict[str, Any]) -> np.ndarray:
    """One PIL image -> float32 (C, H, W) array, the same as timm's evaluation transform.

    Converts to the model's channels, resizes the shorter side to ``size / crop_pct`` (``center``
    crop mode) or both sides (``squash``), center-crops to ``input_size`` and normalizes.

    Args:
        image: the picture (any size and mode).
        config: the stored preprocessing (timm's data-config keys: ``input_size``, ``mean``, ``std``,
            ``crop_pct``, ``interpolation``, ``crop_mode``).

    Returns:
        The normalised (C, H, W) float32 array.

    Examples:
        >>> cfg = {"input_size": [1, 4, 4], "mean": [0.5], "std": [0.5], "crop_pct": 1.0,
        ...        "interpolation": "bilinear", "crop_mode": "center"}
        >>> preprocess(Image.new("RGB", (8, 6), "white"), cfg).shape
        (1, 4, 4)
    """
    x = np.asarray(crop_view(image, config), dtype=np.float32) / 255.0
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    mean = np.asarray(config["mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(config["std"], np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def crop_view(image: Image.Image, config: dict[str, Any]) -> Image.Image:
    """The picture the model sees, before normalisation (what evidence overlays are drawn on).

    The model's channels, resized and center-cropped to ``input_size``.

    Args:
        image: the picture (any size and mode).
        config: the stored preprocessing (see :func:`preprocess`).

    Returns:
        The cropped ``L`` or ``RGB`` picture.

    Raises:
        InspectnetError: the model takes neither 1 nor 3 channels, or ``crop_mode`` is neither
            ``center`` nor ``squash``.

    Examples:
        >>> crop_view(Image.new("RGB", (8, 6)), {"input_size": [3, 4, 4], "crop_pct": 1.0}).size
        (4, 4)
    """
    c, h, w = (int(v) for v in config["input_size"])
    mode = {1: "L", 3: "RGB"}.get(c)
    if mode is None:
        raise InspectnetError(f"images can feed 1- or 3-channel models, not {c}-channel ones")
    image = to_8bit(image).convert(mode)
    crop_pct = float(config.get("crop_pct") or 0.875)
    crop_mode = config.get("crop_mode") or "center"
    resample = _RESAMPLE.get(str(config.get("interpolation", "bilinear")), Image.Resampling.BILINEAR)
    scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    if crop_mode == "squash":
        image = image.resize((scale[1], scale[0]), resample)
    elif crop_mode == "center":
        image = _resize_keep_ratio(image, scale, resample)
    else:
        raise InspectnetError(f"crop_mode {crop_mode!r} in the stored preprocessing is not supported; "
                              f"expected center or squash")
    return _center_crop(image, h, w)


def _resize_keep_ratio(image: Image.Image, scale: tuple[int, int], resample) -> Image.Image:
    """Shorter side to ``scale`` (torchvision's ``Resize(int)`` rule when the target is square)."""
    width, height = image.size
    if scale[0] == scale[1]:
        short, long = min(width, height), max(width, height)
        new_short, new_long = scale[0], int(scale[0] * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
    else:  # timm's ResizeKeepRatio: the smaller ratio to the target wins
        ratio = min(width / scale[1], height / scale[0])
        size = (round(width / ratio), round(height / ratio))
    return image.resize(size, resample)


def _center_crop(image: Image.Image, h: int, w: int) -> Image.Image:
    """Center crop to (h, w), padding with zeros first where the image is smaller (torchvision rule)."""
    width, height = image.size
    if width < w or height < h:
        padded = Image.new(image.mode, (max(width, w), max(height, h)), 0)
        left, top = (max(w - width, 0)) // 2, (max(h - height, 0)) // 2
        padded.paste(image, (left, top))
        image = padded
        width, height = image.size
    top, left = int(round((height - h) / 2.0)), int(round((width - w) / 2.0))
    return image.crop((left, top, left + w, top + h))


def load_image(path: str | Path) -> Image.Image:
    """Open an image file fully (the shared opener: pixel limit, 16-bit scaled), failing with a message naming it.

    Args:
        path: the image file.

    Returns:
        The picture in 8-bit grey or RGB (see :func:`inspectnet.core.images.open_image`).
    """
    return open_image(path)


def collect_images(inputs: Sequence[str | Path]) -> tuple[list[Path], list[int] | None, list[str]]:
    """Image files from ``inputs``: files as given, or one folder (``ROOT/CLASS/IMAGE`` = labelled).

    Args:
        inputs: image files, or a single folder.

    Returns:
        ``(files, labels or None, folder class names)``; labels index the class names, which are the
        folder's sub-folders in sorted order.

    Raises:
        InspectnetError: a folder without sub-folders holds no images.

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp()); (root / "cat").mkdir()
        >>> Image.new("RGB", (2, 2)).save(root / "cat" / "a.png")
        >>> files, labels, classes = collect_images([root]); [f.name for f in files], labels, classes
        (['a.png'], [0], ['cat'])
    """
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        root = Path(inputs[0])
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if classes:
            files, labels = [], []
            for label, cls in enumerate(classes):
                found = sorted(p for p in (root / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
                files += found
                labels += [label] * len(found)
            return files, labels, classes
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InspectnetError(f"folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return files, None, []
    return [Path(p) for p in inputs], None, []
