"""Pictures and files of a concept discovery: the atlas PNGs, the JSON and the basis arrays.

``concepts.png``: one row per concept, its top images with the concept map (its code over the cells,
upsampled bilinearly to the image) highlighted where it exceeds half its peak on that image.
``crops.png``: the same rows, each image cut around the cell where the concept peaks (a window of
two cells' worth of pixels each way), as CRAFT shows its concepts.
"""

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from inspectnet.analysis.concepts.discover import Concepts, as_cells, as_maps
from inspectnet.analysis.concepts.saved import factoriser_arrays
from inspectnet.analysis.concepts.stream import MapStream, Source, as_source
from inspectnet.core.errors import InspectnetError
from inspectnet.core.figures import new_figure, save_figure
from inspectnet.core.storage import atomic_write_bytes, output_dir
from inspectnet.data.concepts import ConceptDataset
from inspectnet.data.datasets import ImageDataset
from inspectnet.models.zoo import ZooModel
from inspectnet.reports.html import overlay


def top_image_maps(result: Concepts, model: ZooModel | nn.Module, data: ImageDataset | ConceptDataset, *,
                   per_concept: int = 6, data_config: dict[str, Any] | None = None,
                   device: str = "cpu") -> dict[int, np.ndarray]:
    """The concept maps (K, h, w) of every image shown, keyed by dataset index.

    One forward pass runs over the top images of every concept, and the fitted factoriser encodes their maps.

    Args:
        result: a discovery with its ``factoriser``.
        model: the model it was discovered in.
        data: the data it was discovered on.
        per_concept: top images per concept.
        data_config: preprocessing of a plain module.
        device: where the model runs.

    Returns:
        ``{image index: codes (K, h, w)}``.

    Raises:
        InspectnetError: the discovery has no fitted factoriser (it was loaded from JSON).

    Examples:
        >>> maps = top_image_maps(result, zm, data, per_concept=2)    # doctest: +SKIP
        >>> next(iter(maps.values())).shape                           # doctest: +SKIP
        (4, 2, 2)
    """
    if result.factoriser is None:
        raise InspectnetError("this discovery was loaded from JSON; pictures need the fitted factoriser")
    wanted = sorted({i for c in result.concepts for i in c["top_images"][:per_concept]})
    full = as_source(data)
    sub = Source(full.spec, len(wanted), lambda j: full.image(wanted[j]))
    stream = MapStream(model, sub, result.layer, data_config=data_config, device=device)
    out: dict[int, np.ndarray] = {}
    for batch in stream.batches():
        codes = as_maps(result.factoriser.encode(as_cells(batch.maps)), batch.maps.shape)
        for j, row in zip(batch.index.tolist(), codes.numpy()):
            out[wanted[j]] = row
    return out


def _picture(data: ImageDataset | ConceptDataset, index: int, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(data.image(index).convert("RGB").resize((size[1], size[0]), Image.BILINEAR))


def _upsampled(code: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(code)[None, None].float()
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _crop(image: np.ndarray, code: np.ndarray) -> np.ndarray:
    """A window around the peak cell of ``code``: two cells' worth of pixels each way, clipped to the image."""
    h, w = code.shape
    y, x = np.unravel_index(int(np.argmax(code)), code.shape)
    ch, cw = image.shape[0] / h, image.shape[1] / w
    top, left = int(max(0, (y - 1) * ch)), int(max(0, (x - 1) * cw))
    return image[top:int(min(image.shape[0], (y + 2) * ch)), left:int(min(image.shape[1], (x + 2) * cw))]


def atlas_figures(result: Concepts, data: ImageDataset | ConceptDataset, maps: dict[int, np.ndarray], *,
                  per_concept: int = 6, size: tuple[int, int] = (96, 96)) -> dict[str, Any]:
    """The two atlas figures (``concepts``: highlighted top images, ``crops``: peak windows).

    Args:
        result: the discovery.
        data: its data.
        maps: :func:`top_image_maps`.
        per_concept: images per row.
        size: the size each image is shown at.

    Returns:
        ``{"concepts": Figure, "crops": Figure}``.

    Examples:
        >>> figs = atlas_figures(result, data, top_image_maps(result, zm, data))    # doctest: +SKIP
        >>> sorted(figs)                                                          # doctest: +SKIP
        ['concepts', 'crops']
    """
    k = len(result.concepts)
    figs = {name: new_figure(figsize=(1.3 * per_concept + 1.6, 1.3 * k + 0.3)) for name in ("concepts", "crops")}
    axes = {name: fig.subplots(k, per_concept, squeeze=False) for name, fig in figs.items()}
    for m, entry in enumerate(result.concepts):
        label = _row_label(entry)
        for col in range(per_concept):
            for ax in (axes["concepts"][m, col], axes["crops"][m, col]):
                ax.set_axis_off()
            if col >= len(entry["top_images"]):
                continue
            i = entry["top_images"][col]
            image, code = _picture(data, i, size), maps[i][m]
            up = _upsampled(code, size)
            peak = float(up.max())
            axes["concepts"][m, col].imshow(overlay(image, up > 0.5 * peak) if peak > 0 else image)
            axes["crops"][m, col].imshow(_crop(image, code))
        for name in figs:
            axes[name][m, 0].set_title(label, fontsize=7, loc="left")
    for fig in figs.values():
        fig.tight_layout(pad=0.3)
    return figs


def _row_label(entry: dict[str, Any]) -> str:
    label = f"#{entry['concept']}  imp {entry['importance']:+.3g}"
    if entry.get("name"):
        label += f"  {entry['name']['name']} (IoU {entry['name']['iou']:.2f})"
    elif entry.get("purest_classes"):
        top = entry["purest_classes"][0]
        label += f"  {top['class']} {top['share']:.0%}"
    return label


def write_concepts(result: Concepts, out: str | Path, *, model: ZooModel | nn.Module | None = None,
                   data: ImageDataset | ConceptDataset | None = None, per_concept: int = 6,
                   data_config: dict[str, Any] | None = None, device: str = "cpu") -> dict[str, Path]:
    """Write a discovery's files: its JSON, its arrays and, given the model and the data, its pictures.

    The files are ``concepts.json``, ``basis.npz`` (basis (K, C), centre (C,), the encoder: see
    :mod:`~inspectnet.analysis.concepts.saved`) and the atlas pictures ``concepts.png`` and ``crops.png``.

    Args:
        result: the discovery.
        out: the output folder (created).
        model: the model, for the pictures.
        data: the data, for the pictures.
        per_concept: images per concept in the pictures.
        data_config: preprocessing of a plain module.
        device: where the model runs.

    Returns:
        The written paths by kind.

    Examples:
        >>> write_concepts(result, "out/concepts", model=zm, data=data)    # doctest: +SKIP
        {'json': ..., 'basis': ..., 'concepts': ..., 'crops': ...}
    """
    out = output_dir(out)
    paths = {"json": result.save(out / "concepts.json")}
    buf = io.BytesIO()
    # and what encoding new cells needs (``inspectnet export --concepts`` reads it back)
    np.savez_compressed(buf, basis=result.basis, centre=result.centre, **factoriser_arrays(result.factoriser))
    paths["basis"] = atomic_write_bytes(out / "basis.npz", buf.getvalue())
    if model is not None and data is not None:
        maps = top_image_maps(result, model, data, per_concept=per_concept, data_config=data_config, device=device)
        for name, fig in atlas_figures(result, data, maps, per_concept=per_concept).items():
            paths[name] = save_figure(fig, out / f"{name}.png", dpi=80)
    return paths
