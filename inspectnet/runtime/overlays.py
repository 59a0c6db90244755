"""Class-evidence overlays written with Pillow and numpy only (``inspectnet explain`` and ``run --evidence``).

Evidence is signed: red where a position speaks for the class, blue where it speaks against it,
the picture showing through where the evidence is near zero (opacity ∝ |E| / max |E| of that map,
so each map uses its own full scale, stated in the JSON). A map that is constant or holds NaN is
drawn without colour and reported in the JSON (``status``), never crashed on.

>>> view = np.zeros((8, 8, 3), np.uint8)
>>> evidence_overlay(view, np.array([[1.0, -1.0], [0.0, 0.0]])).shape
(8, 8, 3)
>>> map_status(np.ones((2, 2))), map_status(np.array([[0.0, np.nan]]))
('constant', 'nan')
"""

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from inspectnet.core.errors import InspectnetError
from inspectnet.core.storage import atomic_write_bytes, atomic_write_json

POSITIVE = np.array([220.0, 30.0, 30.0])
NEGATIVE = np.array([30.0, 80.0, 230.0])
MAX_OPACITY = 0.7


def map_status(evidence: np.ndarray) -> str:
    """Whether an evidence map can be drawn.

    Args:
        evidence: the map (any shape).

    Returns:
        ``"nan"`` (any non-finite value), ``"constant"`` (no position differs) or ``"ok"``.

    Examples:
        >>> map_status(np.array([[0.0, 1.0]]))
        'ok'
    """
    e = np.asarray(evidence, dtype=np.float64)
    if not np.isfinite(e).all():
        return "nan"
    return "constant" if e.size == 0 or float(e.max() - e.min()) == 0.0 else "ok"


def upsample(evidence: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map resized bilinearly to ``size`` with Pillow's float images.

    Args:
        evidence: the (h, w) map.
        size: the target (H, W).

    Returns:
        The (H, W) float64 map.

    Examples:
        >>> upsample(np.ones((2, 2)), (4, 6)).shape
        (4, 6)
    """
    picture = Image.fromarray(np.asarray(evidence, dtype=np.float32), mode="F")
    return np.asarray(picture.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float64)


def evidence_overlay(view: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """``view`` with the signed ``evidence`` blended over it: red for, blue against the class.

    Args:
        view: the (H, W, 3) uint8 picture.
        evidence: the (h, w) map; a map that is not ``"ok"`` (see :func:`map_status`) draws no colour.

    Returns:
        The (H, W, 3) uint8 overlay.

    Examples:
        >>> evidence_overlay(np.zeros((1, 2, 3), np.uint8), np.array([[1.0, -1.0]]))[0].tolist()
        [[154, 21, 21], [21, 56, 161]]
    """
    rgb = np.asarray(view, dtype=np.float64)
    if map_status(evidence) != "ok":
        return rgb.round().astype(np.uint8)
    e = upsample(evidence, rgb.shape[:2])
    scale = float(np.abs(e).max())
    alpha = (MAX_OPACITY * np.abs(e) / scale)[..., None] if scale > 0 else np.zeros((*e.shape, 1))
    colour = np.where(e[..., None] >= 0, POSITIVE, NEGATIVE)
    return np.clip((1 - alpha) * rgb + alpha * colour, 0, 255).round().astype(np.uint8)


def check_image_size(name: str, size: tuple[int, int], grid: tuple[int, int]) -> None:
    """Refuse an image smaller than the evidence grid: its overlay could not show each position.

    Args:
        name: the image, as the message names it.
        size: its (H, W) in pixels.
        grid: the evidence grid (H, W).

    Raises:
        InspectnetError: the image is smaller than the grid in either direction.

    Examples:
        >>> check_image_size("a.png", (3, 3), (7, 7))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: image a.png is 3x3 px, smaller than the 7x7 evidence map; ...
    """
    if size[0] < grid[0] or size[1] < grid[1]:
        raise InspectnetError(f"image {name} is {size[0]}x{size[1]} px, smaller than the {grid[0]}x{grid[1]} "
                              f"evidence map; give images of at least {grid[0]}x{grid[1]} px")


def safe_stem(name: str, limit: int = 60) -> str:
    """A file-name stem from any text: only letters, digits, ``.``, ``_`` and ``-`` (no path can escape).

    Args:
        name: any text (a path, an image label).
        limit: the most characters kept.

    Returns:
        The stem; ``"image"`` when nothing is left.

    Examples:
        >>> safe_stem("../a b/<c>.png")
        'c'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(name)).stem).strip("._")[:limit] or "image"


def write_overlays(out: str | Path, items: Sequence[dict[str, Any]], class_names: Sequence[str],
                   meta: dict[str, Any]) -> dict[str, Any]:
    """Write one PNG per (image, class) — the model's view | the overlay — and ``evidence.json`` into ``out``.

    The JSON lists, per image and class, the label, logit, evidence sum, ``residual`` =
    |Σ E + offset − logit| (the exactness check), the map's largest |E| and its ``status``; ``meta`` is
    stored beside them.

    Args:
        out: the output folder.
        items: one dict per image: ``name``, ``view`` (H, W, 3 uint8, the crop the model saw), ``maps``
            (k, h, w), ``classes`` (k,), ``logits`` (C,), ``offset`` (k,).
        class_names: the model's class names.
        meta: fields stored at the top of the JSON (model, engine, ...).

    Returns:
        The ``evidence.json`` document.

    Examples:
        >>> import tempfile
        >>> item = {"name": "x.png", "view": np.zeros((4, 4, 3), np.uint8), "maps": np.ones((1, 2, 2)),
        ...         "classes": np.array([0]), "logits": np.array([5.0]), "offset": np.array([1.0])}
        >>> doc = write_overlays(tempfile.mkdtemp(), [item], ["cat"], {"k": 1})
        >>> row = doc["images"][0]["classes"][0]; row["label"], row["evidence_sum"], row["residual"]
        ('cat', 4.0, 0.0)
    """
    out = Path(out)
    images = []
    for n, item in enumerate(items):
        rows = []
        for maps, c, off in zip(item["maps"], item["classes"], item["offset"]):
            c = int(c)
            label = class_names[c] if 0 <= c < len(class_names) else f"class_{c}"
            path = out / f"{n:04d}_{safe_stem(item['name'])}_class{c}.png"
            picture = np.concatenate([item["view"], evidence_overlay(item["view"], maps)], axis=1)
            _save_png(picture, path)
            total = float(np.sum(maps, dtype=np.float64))
            logit = float(item["logits"][c])
            rows.append({"index": c, "label": label, "logit": logit, "offset": float(off), "evidence_sum": total,
                         "residual": abs(total + float(off) - logit), "max_abs": float(np.nanmax(np.abs(maps)))
                         if np.isfinite(maps).any() else None, "status": map_status(maps), "path": path.name})
        images.append({"image": item["name"], "classes": rows})
    doc = {**meta, "images": images}
    atomic_write_json(out / "evidence.json", doc)
    return doc


def _save_png(picture: np.ndarray, path: Path) -> None:
    import io

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
