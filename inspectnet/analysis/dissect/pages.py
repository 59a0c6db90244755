"""What a dissection leaves on disk: the per-unit CSV and JSON, and an HTML page per layer.

Each page shows each unit's top images with its masks overlaid.
"""

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from markupsafe import Markup
from PIL import Image
from torch import nn

from inspectnet.analysis.dissect.dissection import (
    Dissection,
    dissection_transform,
    forward_maps,
    unit_masks,
    unpack_model,
)
from inspectnet.core.devices import resolve_device
from inspectnet.core.storage import atomic_write_bytes, atomic_write_text, output_dir
from inspectnet.core.tables import csv_text
from inspectnet.data.concepts import ConceptDataset
from inspectnet.models.layers import model_state
from inspectnet.models.layout import Layout
from inspectnet.models.zoo import ZooModel
from inspectnet.probe.hooks import Probe
from inspectnet.reports.blocks import Table
from inspectnet.reports.html import bar_chart, img, overlay
from inspectnet.reports.render import render_html_template


def unit_overlays(model: ZooModel | nn.Module, data: ConceptDataset, layer: str, result: Dissection,
                  units: Sequence[int], *, data_config: dict[str, Any] | None = None, device: str = "auto",
                  batch_size: int = 32) -> dict[int, list[tuple[int, np.ndarray]]]:
    """For each unit, its top images' binary masks S_k at mask resolution.

    Only the top images of the given units are run through the model (for report pictures).

    Args:
        model: the model (a plain module needs ``data_config``).
        data: the concept data.
        layer: the layer.
        result: the dissection.
        units: the units.
        data_config: input size, mean and std of a plain module.
        device: where to run the model.
        batch_size: images per forward pass.

    Returns:
        ``{unit: [(image, mask)]}``.
    """
    net, _, _, cfg = unpack_model(model, data_config)
    info = {u["unit"]: u for u in result.layers[layer]["units"]}
    wanted = sorted({i for k in units for i in info[k]["top_images"]})
    mask_size = tuple(result.mask_size)
    transform = dissection_transform(cfg)
    thresholds = torch.tensor([u["threshold"] for u in result.layers[layer]["units"]])
    dev = resolve_device(device)
    per_image: dict[int, np.ndarray] = {}
    unit_ids = torch.tensor(list(units), dtype=torch.long)
    with model_state(net, device=dev, training=False), torch.inference_mode(), \
            Probe(net, [layer], reducer="full") as probe:
        for s in range(0, len(wanted), batch_size):
            ids = wanted[s:s + batch_size]
            x = torch.stack([transform(data.image(i)) for i in ids])
            maps = forward_maps(net, probe, x, [layer], dev)[layer][:, unit_ids.to(dev)]
            sel = unit_masks(maps, thresholds[unit_ids], mask_size).cpu().numpy()
            for j, i in enumerate(ids):
                per_image[i] = sel[j]
    pos = {k: j for j, k in enumerate(units)}
    return {k: [(i, per_image[i][pos[k]]) for i in info[k]["top_images"]] for k in units}



def write_dissection(result: Dissection, out: str | Path, *, model: ZooModel | nn.Module | None = None,
                     data: ConceptDataset | None = None, data_config: dict[str, Any] | None = None,
                     images_per_unit: int = 4, max_units: int = 512, device: str = "auto") -> dict[str, Path]:
    """Write ``dissection.json``, ``dissection.csv`` (one row per unit), ``iou.npz`` (full matrices) and pages.

    One self-contained HTML page per layer is written when ``model`` and ``data`` are given. Each page
    shows the unique concepts per category as a bar chart and a sortable table of units (sorted by IoU,
    at most ``max_units``) with their top images and thresholded unit mask overlaid.

    Args:
        result: the dissection.
        out: the output folder.
        model: the model, for the pages.
        data: the concept data, for the pages.
        data_config: input size, mean and std of a plain module.
        images_per_unit: top images shown per unit.
        max_units: the most units per page.
        device: where to run the model.

    Returns:
        The files written, by kind.
    """
    out = output_dir(out)
    paths = {"json": result.save(out / "dissection.json")}
    rows = [[layer, u["unit"], u["concept"], u["category"], f"{u['iou']:.6f}", int(u["detector"]),
             f"{u['threshold']:.6g}"] for layer, info in result.layers.items() for u in info["units"]]
    paths["csv"] = atomic_write_text(out / "dissection.csv", csv_text(
        ["layer", "unit", "concept", "category", "iou", "detector", "threshold"], rows))
    buf = io.BytesIO()
    np.savez_compressed(buf, concepts=np.array(result.concepts), **{_safe(k): v for k, v in result.iou.items()})
    paths["iou"] = atomic_write_bytes(out / "iou.npz", buf.getvalue())
    if model is not None and data is not None:
        for layer in result.layers:
            html_text = layer_page(result, layer, model, data, data_config=data_config,
                                   images_per_unit=images_per_unit, max_units=max_units, device=device)
            paths[f"html:{layer}"] = atomic_write_text(out / f"dissection_{_safe(layer)}.html", html_text)
    return paths



def layer_page(result: Dissection, layer: str, model: ZooModel | nn.Module, data: ConceptDataset, *,
               data_config: dict[str, Any] | None = None, images_per_unit: int = 4, max_units: int = 512,
               device: str = "auto") -> str:
    """The HTML page of one layer (every text escaped, pictures embedded).

    Args:
        result: the dissection.
        layer: the layer.
        model: the model.
        data: the concept data.
        data_config: input size, mean and std of a plain module.
        images_per_unit: top images shown per unit.
        max_units: the most units on the page.
        device: where to run the model.

    Returns:
        The HTML.
    """
    info = result.layers[layer]
    ranked = sorted(info["units"], key=lambda u: -u["iou"])[:max_units]
    shown = [u["unit"] for u in ranked]
    pics = unit_overlays(model, data, layer, result, shown, data_config=data_config, device=device)
    cats = result.category_names()
    rows, keys = [], []
    for u in ranked:
        thumbs = Markup("").join(img(overlay(_image_array(data, i, result.mask_size), m),
                                     title=f"{data.name(i)} (unit {u['unit']})", width=96)
                                 for i, m in pics[u["unit"]][:images_per_unit])
        rows.append([u["unit"], u["concept"], u["category"], u["iou"], "yes" if u["detector"] else "no", thumbs])
        keys.append([u["unit"], u["concept"], u["category"], u["iou"], int(u["detector"]), ""])
    intro = (f"{result.model} on {result.data}: {result.num_images} images, threshold = top "
             f"{result.quantile:g} quantile per unit, detector if IoU ≥ {result.iou_threshold:g}. "
             f"{info['detectors']} of {info['num_units']} units are detectors of {info['unique_detectors']} "
             f"unique concepts." + (f" The layer's units are {Layout.from_dict(info['layout']).describe()}."
                                    if info.get("layout") else ""))
    return render_html_template(
        "dissection.html.j2", title=f"Network dissection of {layer}", intro=intro,
        chart=bar_chart(cats, [info["unique_by_category"].get(c, 0) for c in cats],
                        title=f"unique concepts per category in {layer}"),
        empty_concepts=", ".join(result.empty_concepts), shown=len(ranked), total=len(info["units"]),
        units=Table(["unit", "concept", "category", "IoU", "detector", "top images"], rows, sortable=True,
                    sort_keys=keys))



def _image_array(data: ConceptDataset, index: int, size: Sequence[int]) -> np.ndarray:
    im = data.image(index).convert("RGB")
    if im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(im)



def _safe(name: str) -> str:
    """A file-name-safe form of a layer name."""
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
