"""Streaming Network Dissection (Bau et al. 2017): which units detect which concepts.

For each unit k of each chosen layer: T_k is the top-``quantile`` level of its activations over
every pixel of the dataset (q = 0.005: P(a_k > T_k) = 0.005); S_k(x) is its map upsampled to the mask
resolution (bilinear, ``align_corners=False``) and binarised as ``a_k > T_k``; IoU_{k,c} =
Σ_i |S_k(x_i) ∩ L_c(x_i)| / Σ_i |S_k(x_i) ∪ L_c(x_i)| over the whole dataset.

One pass (default): the data is streamed once; per unit a tail sketch
(:mod:`inspectnet.analysis.dissect.tail`) keeps the histogram of its raw activations above a floor
that provably stays below T_k, and on the same bins its upsampled pixels above that floor, overall and
inside each concept; T_k, |S_k| and |S_k ∩ L_c| come out of these counts after the pass (error at
most one bin). Only the upsampled cells that can exceed the floor are evaluated
(:mod:`inspectnet.analysis.dissect.upsample`). Two passes (``passes=2``): the first gives T_k from an
order-independent quantile sketch (:mod:`inspectnet.analysis.dissect.sketch`), the second counts the
overlaps exactly at T_k; twice the forward cost, memory units × concepts instead of units × concepts
× bins/16, and under ``torchrun`` a result equal bit for bit to one process's (one pass: within a bin).

A unit's concept is its best-IoU concept; it is a detector if that IoU ≥ ``iou_threshold`` (0.04).
Unique detectors = distinct concepts among a layer's detectors. No activation map outlives its
batch, so memory does not grow with the number of images. Every layout is read on its own axes
(:mod:`inspectnet.models.layout`): channels-last maps (Swin) are permuted, ViT-style token outputs
(B, T, C) are reshaped to their patch grid after dropping the class, distillation and register
tokens, and each layer's result says which (``layout``).

>>> from inspectnet.models.zoo import load_model; from inspectnet.data.concepts import load_concepts
>>> zm = load_model("resnet18", num_classes=2, input_size=64)
>>> d = dissect(zm, load_concepts("shapes?n=16"), "layer1", batch_size=8)
>>> d.layers["layer1"]["num_units"], d.layers["layer1"]["map_size"]
(64, [16, 16])
"""

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from inspectnet.analysis.dissect import DEFAULT_IOU_THRESHOLD, DEFAULT_QUANTILE
from inspectnet.analysis.dissect.config import DissectConfig
from inspectnet.analysis.dissect.counts import DissectionCounts, best_images, no_images, padded_top
from inspectnet.analysis.dissect.overlaps import iou_from_counts, unit_masks, unit_overlaps
from inspectnet.analysis.dissect.sketch import UnitQuantiles
from inspectnet.core.devices import resolve_device
from inspectnet.core.distributed import all_gather, all_reduce, shard_batches, share_from_main, watch_group, world
from inspectnet.core.errors import InspectnetError
from inspectnet.core.progress import progress
from inspectnet.core.results import Result
from inspectnet.data.concepts import ConceptDataset
from inspectnet.data.loading import check_workers, data_loader
from inspectnet.models.layers import PRE_LOGITS, model_state, resolve_layers
from inspectnet.models.layout import layer_layout
from inspectnet.models.zoo import ZooModel, weights_fingerprint
from inspectnet.probe.hooks import Probe

__all__ = ["Dissection", "dissect", "dissection_transform", "forward_maps", "iou_from_counts", "spatial_maps",
           "to_maps", "unit_masks", "unit_overlaps", "unpack_model"]


@dataclasses.dataclass(frozen=True)
class Dissection(Result):
    """Dissection of one model on one concept dataset.

    ``layers[name]`` holds ``units`` (per unit: unit, concept, category, iou, detector, threshold,
    top_images), ``detectors``, ``unique_detectors``, ``unique_by_category``, ``detector_concepts``,
    ``num_units``, ``map_size`` and ``layout`` (how the layer holds its positions and which prefix
    tokens were excluded: :meth:`~inspectnet.models.layout.Layout.to_dict`). ``iou[name]`` is the full
    (units × concepts) IoU matrix; it is kept out of the JSON (see :func:`write_dissection`, which stores it as ``iou.npz``).
    """

    model: str
    fingerprint: str
    data: str
    num_images: int
    quantile: float
    iou_threshold: float
    mask_size: list[int]
    concepts: list[str]
    categories: dict[str, str]
    empty_concepts: list[str]
    layers: dict[str, dict[str, Any]]
    passes: int = 1
    iou: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, without the full IoU matrices (saved apart, in ``iou.npz``).

        Returns:
            ``{field name: value}``.
        """
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "iou"}

    def category_names(self) -> list[str]:
        """The concept categories in first-seen order of the concepts.

        Returns:
            The category names.
        """
        return list(dict.fromkeys(self.categories[c] for c in self.concepts))


def dissection_transform(data_config: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """The model's preprocessing without cropping: the whole image is resized to the input size.

    Activation maps so stay aligned with the masks (a centre crop would cut the masks' borders away).

    Args:
        data_config: the model's data config (``input_size``, ``mean``, ``std``, ``interpolation``).

    Returns:
        The transform PIL image -> normalised tensor.

    Raises:
        InspectnetError: the model takes neither 1 nor 3 channels.
    """
    from torchvision import transforms

    c, h, w = data_config["input_size"]
    mode = {1: "L", 3: "RGB"}.get(c)
    if mode is None:
        raise InspectnetError(f"dissection feeds 1- or 3-channel models, not {c}-channel ones")
    interp = transforms.InterpolationMode.BICUBIC if data_config.get("interpolation") == "bicubic" \
        else transforms.InterpolationMode.BILINEAR
    return transforms.Compose([
        transforms.Lambda(lambda im: im.convert(mode)), transforms.Resize((h, w), interpolation=interp),
        transforms.ToTensor(), transforms.Normalize(tuple(data_config["mean"]), tuple(data_config["std"]))])


class _Items(torch.utils.data.Dataset):
    """(input tensor, masks (C, H, W) bool at the common mask size, index) for each image."""

    def __init__(self, data: ConceptDataset, transform: Callable, mask_size: tuple[int, int], n: int):
        self.data, self.transform, self.mask_size, self.n = data, transform, mask_size, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        m = torch.from_numpy(np.ascontiguousarray(self.data.masks(i)))
        if tuple(m.shape[1:]) != self.mask_size:
            # images of other sizes: image and masks are both stretched to a common frame
            m = F.interpolate(m[None].float(), size=self.mask_size, mode="nearest")[0] > 0.5
        return self.transform(self.data.image(i)), m, i


def to_maps(t: torch.Tensor, layer: str, model: nn.Module | None = None,
            input_shape: Sequence[int] | None = None) -> torch.Tensor:
    """A layer output as (B, K, h, w) maps, by its :class:`~inspectnet.models.layout.Layout`.

    Channels-first maps stay as they are, channels-last maps are permuted, ViT tokens (B, T, C) lose
    the prefix tokens ``model`` declares (class, distillation, registers) and are reshaped to their grid.

    Args:
        t: the output of ``model``'s module ``layer``.
        layer: its name (for messages and the module's declared format).
        model: the network, which declares prefix tokens, patch grid and output format.
        input_shape: (B, C, H, W) of the input, which the grid must fit.

    Returns:
        The maps; raises :class:`InspectnetError` for outputs without positions.

    Examples:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=1)
        >>> to_maps(torch.zeros(2, 1 + 16, 8), "blocks.0", vit).shape
        torch.Size([2, 8, 4, 4])
    """
    return spatial_maps(layer_layout(model, layer, t, input_shape=input_shape).maps(t), layer)


def spatial_maps(maps: torch.Tensor, layer: str) -> torch.Tensor:
    """``maps`` when they are (B, K, h, w); a layer without positions is refused in one line.

    Args:
        maps: a probed layer's output put on channels-first axes.
        layer: its name, for the message.

    Returns:
        ``maps`` unchanged.

    Raises:
        InspectnetError: the maps are not 4-D.

    Examples:
        >>> spatial_maps(torch.zeros(1, 2, 3, 3), "conv").shape
        torch.Size([1, 2, 3, 3])
    """
    if maps.dim() != 4:
        raise InspectnetError(f"layer {layer!r} gives outputs of shape {tuple(maps.shape)}, which have no spatial "
                              f"maps; choose a convolutional layer or a transformer block (see `inspectnet layers "
                              f"MODEL`)")
    return maps


def dissect(model: ZooModel | nn.Module, data: ConceptDataset, layers: Sequence[str] | str, *,
            data_config: dict[str, Any] | None = None, quantile: float = DEFAULT_QUANTILE,
            iou_threshold: float = DEFAULT_IOU_THRESHOLD, batch_size: int = 32, device: str = "auto",
            limit: int | None = None, top_k: int = 8, bins: int = 4096, passes: int = 1, num_workers: int = 0,
            show_progress: bool | None = None, shard_order: str = "contiguous") -> Dissection:
    """Dissect ``layers`` of ``model`` on a concept dataset (one streaming pass, or two; see module doc).

    ``model`` is a :class:`ZooModel` or a plain module (then ``data_config`` gives input size,
    mean and std). Under ``torchrun`` each rank streams its share of the batches and the counts,
    sketches and top images are all-reduced: every rank returns the same result.

    Args:
        model: the model.
        data: the concept data.
        layers: layer specs (see :func:`~inspectnet.models.layers.resolve_layers`).
        data_config: input size, mean and std of a plain module.
        quantile: the top fraction of pixels a unit keeps (0.005).
        iou_threshold: the IoU from which a unit counts as detecting a concept.
        batch_size: images per forward pass.
        device: where to run the model.
        limit: the first ``limit`` images only.
        top_k: top images kept per unit.
        bins: the fine bins per unit of the sketch.
        passes: 1 (streaming) or 2 (exact thresholds first).
        num_workers: data loader processes.
        show_progress: show a progress bar (None: when stderr is a terminal).
        shard_order: how ranks share the batches under ``torchrun``.

    Returns:
        The dissection.

    Raises:
        InspectnetError: a layer is ``pre_logits`` or has no maps, the data has no images, or no concept
            has a positive pixel.
    """
    net, name, fp, cfg = unpack_model(model, data_config)
    # the parameters' one validation path (errors name the keywords; the command line, its flags)
    DissectConfig(quantile=quantile, iou_threshold=iou_threshold, passes=passes, batch_size=batch_size, limit=limit,
                  device=device)
    check_workers(num_workers)
    names = resolve_layers(net, layers, head_name=getattr(model, "head_name", None))
    if PRE_LOGITS in names:
        raise InspectnetError("layer 'pre_logits' is a feature vector without spatial maps; cannot dissect it")
    n = len(data) if limit is None else min(limit, len(data))
    if n == 0:
        raise InspectnetError(f"concept data {data.spec!r} has no images")
    mask_size = tuple(int(s) for s in data.masks(0).shape[1:])
    dev = resolve_device(device)
    items = _Items(data, dissection_transform(cfg), mask_size, n)
    share = shard_batches(n, batch_size, *world(), shard_order)
    loader = data_loader(items, batch_sampler=[list(b) for b in share], num_workers=num_workers)
    with model_state(net, device=dev, training=False), torch.inference_mode(), \
            Probe(net, names, reducer="full") as probe, watch_group("the dissection pass") as watch:
        if passes == 1:
            counts = DissectionCounts(n, mask_size, len(data.concepts), quantile=quantile, bins=bins, top_k=top_k,
                                      device=dev)
            _one_pass(net, probe, loader, names, dev, counts, show_progress, watch)
            thresholds, tops, shapes = counts.thresholds(), counts.tops, counts.map_sizes
            overlaps, mask_area = counts.overlaps(thresholds), counts.mask_area.cpu()
        else:
            sketches, tops, shapes = _pass_thresholds(net, probe, loader, names, dev, top_k, bins,
                                                      show_progress, watch)
            thresholds = {k: s.quantile(1.0 - quantile) for k, s in sketches.items()}
            overlaps, mask_area = _pass_iou(net, probe, loader, names, dev, thresholds, mask_size,
                                            len(data.concepts), show_progress, watch)
        # rank 0 always ran the first batch, so it saw every layer's layout
        layouts = share_from_main({k: v.to_dict() for k, v in probe.layouts.items()})
    empty = [c for c, a in zip(data.concepts, mask_area.tolist()) if a == 0]
    if len(empty) == len(data.concepts):
        raise InspectnetError(f"concept data {data.spec!r}: no concept has any positive pixel in {n} images")
    if empty:
        warnings.warn(f"concepts without positive pixels (reported, never a detector): {', '.join(empty)}",
                      stacklevel=2)
    result_layers, ious = {}, {}
    for layer in names:
        inter, act_area = overlaps[layer]
        iou = iou_from_counts(inter.cpu(), act_area.cpu(), mask_area)
        ious[layer] = iou
        result_layers[layer] = _summarise(iou, thresholds[layer].cpu(), tops[layer][1].cpu(), shapes[layer], data,
                                          mask_area, iou_threshold)
        result_layers[layer]["layout"] = layouts[layer]
    return Dissection(model=name, fingerprint=fp, data=data.spec, num_images=n, quantile=quantile,
                      iou_threshold=iou_threshold, mask_size=list(mask_size), concepts=list(data.concepts),
                      categories=dict(data.categories), empty_concepts=empty, layers=result_layers, passes=passes,
                      iou=ious)


def unpack_model(model: ZooModel | nn.Module, data_config: dict[str, Any] | None):
    """The network, its name, weights fingerprint and data config, from a :class:`ZooModel` or a plain module.

    Args:
        model: the model.
        data_config: input size, mean and std (required for a plain module; overrides a ZooModel's).

    Returns:
        ``(network, name, fingerprint, data config)``.

    Raises:
        InspectnetError: a plain module comes without ``data_config``, or ``model`` is neither kind.
    """
    if isinstance(model, ZooModel):
        net, cfg, name, fp = model.model, data_config or model.data_config, model.spec, model.fingerprint()
    elif isinstance(model, nn.Module):
        if data_config is None:
            raise InspectnetError("dissecting a plain module needs data_config (input_size, mean, std)")
        net, cfg, name, fp = model, data_config, type(model).__name__, weights_fingerprint(model)
    else:
        raise InspectnetError(f"cannot dissect a {type(model).__name__}; expected a ZooModel or nn.Module")
    return net, name, fp, cfg


def forward_maps(net: nn.Module, probe: Probe, x: torch.Tensor, names: list[str],
                 dev: torch.device) -> dict[str, torch.Tensor]:
    """The (B, K, h, w) maps of ``names`` on ``x``: the ``full`` probe puts every layout on channels-first axes.

    Args:
        net: the network.
        probe: a ``full`` probe on it.
        x: the input batch.
        names: the layers.
        dev: where to run.

    Returns:
        Layer -> float maps.
    """
    net(x.to(dev, non_blocking=True))
    return {k: spatial_maps(probe.outputs[k], k).float() for k in names}


def _one_pass(net, probe, loader, names, dev, counts: DissectionCounts, show_progress, watch) -> None:
    """The one-pass method: accumulate every batch of this rank into ``counts``, then combine the ranks."""
    for x, m, idx in progress(loader, total=len(loader), desc="dissect", enabled=show_progress):
        watch.check()
        counts.accumulate(forward_maps(net, probe, x, names, dev), m.to(dev), idx)
    counts.all_reduce()


def _pass_thresholds(net, probe, loader, names, dev, top_k, bins, show_progress, watch):
    """Pass 1 of two: per-unit quantile sketches and the top-k images by maximum activation (merged over ranks)."""
    sketches: dict[str, UnitQuantiles] = {}
    tops: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    shapes: dict[str, list[int]] = {}
    for x, _m, idx in progress(loader, total=len(loader), desc="dissect 1/2", enabled=show_progress):
        watch.check()
        maps = forward_maps(net, probe, x, names, dev)
        for k, a in maps.items():
            b, units, h, w = a.shape
            if k not in sketches:
                sketches[k] = UnitQuantiles(units, bins=bins, device=dev)
                tops[k] = no_images(units, dev)
                shapes[k] = [units, h, w]
            sketches[k].update(a.transpose(0, 1).reshape(units, -1))
            tops[k] = best_images(torch.cat([tops[k][0], a.amax(dim=(2, 3)).T], dim=1),
                                  torch.cat([tops[k][1], idx.to(dev)[None].expand(units, -1)], dim=1), top_k)
    # rank 0 always computes the first batch; a rank that had no batch learns the layers' shapes from it
    shapes = share_from_main(shapes)
    for k, (units, _h, _w) in shapes.items():
        if k not in sketches:
            sketches[k], tops[k] = UnitQuantiles(units, bins=bins, device=dev), no_images(units, dev)
        sketches[k].all_reduce()
        vals, ids = padded_top(tops[k], top_k)
        tops[k] = best_images(torch.cat(all_gather(vals), dim=1), torch.cat(all_gather(ids), dim=1), top_k)
    return sketches, tops, {k: v[1:] for k, v in shapes.items()}


def _pass_iou(net, probe, loader, names, dev, thresholds, mask_size, n_concepts, show_progress, watch):
    """Pass 2 of two: per layer exact (intersections (K, C), unit areas (K,)) and the concept areas.

    They are summed over ranks.
    """
    inter = {k: torch.zeros(len(thresholds[k]), n_concepts, dtype=torch.float64, device=dev) for k in names}
    act_area = {k: torch.zeros(len(thresholds[k]), dtype=torch.float64, device=dev) for k in names}
    mask_area = torch.zeros(n_concepts, dtype=torch.float64, device=dev)
    for x, m, _idx in progress(loader, total=len(loader), desc="dissect 2/2", enabled=show_progress):
        watch.check()
        maps = forward_maps(net, probe, x, names, dev)
        masks = m.to(dev).flatten(2)
        mask_area += masks.sum(dim=(0, 2)).double()
        for k, a in maps.items():
            i_k, a_k = unit_overlaps(a, masks, thresholds[k], mask_size)
            inter[k] += i_k
            act_area[k] += a_k
    for t in (mask_area, *inter.values(), *act_area.values()):
        all_reduce(t)  # float64 sums of whole pixel counts: exact in any order
    return {k: (inter[k].cpu(), act_area[k].cpu()) for k in names}, mask_area.cpu()


def _summarise(iou: np.ndarray, thresholds: torch.Tensor, top_images: torch.Tensor, shape, data: ConceptDataset,
               mask_area: torch.Tensor, iou_threshold: float) -> dict[str, Any]:
    valid = (mask_area > 0).numpy()
    scored = np.where(valid[None, :], iou, -1.0)  # empty concepts are reported, never chosen
    best = scored.argmax(axis=1)
    units = []
    for k in range(iou.shape[0]):
        c = data.concepts[best[k]]
        value = float(iou[k, best[k]])
        units.append({"unit": k, "concept": c, "category": data.categories[c], "iou": round(value, 6),
                      "detector": bool(value >= iou_threshold), "threshold": float(thresholds[k]),
                      "top_images": [int(i) for i in top_images[k].tolist()]})
    detectors = [u for u in units if u["detector"]]
    concepts = {}
    for u in detectors:
        concepts[u["concept"]] = concepts.get(u["concept"], 0) + 1
    by_cat = {cat: 0 for cat in data.category_names}
    for c in concepts:
        by_cat[data.categories[c]] += 1
    return {"num_units": len(units), "map_size": shape, "detectors": len(detectors),
            "unique_detectors": len(concepts), "unique_by_category": by_cat,
            "detector_concepts": dict(sorted(concepts.items(), key=lambda kv: -kv[1])), "units": units}
