"""Pictures that explain single predictions and single units, rendered as PNG overlays.

* :func:`input_attributions` — captum Integrated Gradients (input pixels) and Layer Grad-CAM at the
  last convolution, for chosen images, batched with an internal batch size.
* :func:`influential_feature_maps` — the spatial maps (before global pooling) of each class's top
  influential features S_c, upsampled over an image of that class ("Decomposing the Deep", Table 7).
* :func:`receptive_fields` — for chosen units of a layer, their top images by activation with the
  unit's thresholded map overlaid (the EBP / CGL figures); thresholding reuses dissection's
  :func:`~inspectnet.analysis.dissect.dissection.unit_masks` with a per-unit top-quantile threshold.

>>> figs = input_attributions(zm, ds, [0, 5], "out/attr")         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from inspectnet.core.errors import InspectnetError
from inspectnet.models.layers import eval_mode, resolve_layers

if TYPE_CHECKING:
    from inspectnet.data import ImageDataset
    from inspectnet.models.zoo import ZooModel


HEAT_CMAP = "jet"


def heat_overlay(image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.5, cmap: str = HEAT_CMAP) -> np.ndarray:
    """An RGB uint8 picture: ``heat`` blended over ``image``.

    Args:
        image: the (H, W, 3) uint8 picture.
        heat: the (H, W) map, any range (normalised to [0, 1]).
        alpha: the map's opacity.
        cmap: the matplotlib colour map of the heat.

    Returns:
        The (H, W, 3) uint8 overlay.

    Examples:
        >>> heat_overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2))).shape
        (2, 2, 3)
    """
    import matplotlib

    h = np.asarray(heat, dtype=np.float64)
    span = h.max() - h.min()
    h = (h - h.min()) / span if span > 0 else np.zeros_like(h)  # a flat map shows as "no evidence"
    colour = matplotlib.colormaps[cmap](h)[..., :3] * 255.0
    rgb = image.astype(np.float64)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return np.clip((1 - alpha) * rgb + alpha * colour, 0, 255).round().astype(np.uint8)


def display_image(dataset: ImageDataset, index: int, size: tuple[int, int]) -> np.ndarray:
    """The dataset's original image ``index`` as RGB uint8 at ``size``, for overlays.

    Args:
        dataset: the data.
        index: the sample.
        size: (H, W) of the picture.

    Returns:
        The (H, W, 3) uint8 picture.
    """
    from PIL import Image

    im = dataset.image(index).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(im)


def _grid_png(rows: list[list[np.ndarray]], titles: list[list[str]], path: Path, scale: float = 1.6,
              scales: list[list[tuple[float, float] | None]] | None = None) -> Path:
    """Save a grid of RGB pictures with small titles as one PNG.

    Where ``scales[r][c]`` is a (low, high) range, the picture gets a colour bar from low to high (the
    heat map's own values).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from inspectnet.core.figures import new_figure, save_figure

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = new_figure(figsize=(scale * n_cols * (1.25 if scales else 1.0), scale * n_rows + 0.2))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(rows[r]):
                ax.imshow(rows[r][c], interpolation="nearest")
                ax.set_title(titles[r][c], fontsize=7)
                span = scales[r][c] if scales and c < len(scales[r]) else None
                if span is not None:
                    bar = fig.colorbar(ScalarMappable(Normalize(*span), HEAT_CMAP), ax=ax, fraction=0.046, pad=0.03)
                    bar.ax.tick_params(labelsize=6)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def choose_images(labels: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` indices, round-robin over classes (first samples of each class first).

    Args:
        labels: one label per sample.
        count: how many to choose.

    Returns:
        The indices.

    Examples:
        >>> choose_images(np.array([0, 0, 1, 1, 2]), 4)
        [0, 2, 4, 1]
    """
    labels = np.asarray(labels)
    per_class = [list(np.flatnonzero(labels == c)) for c in sorted(set(labels.tolist()) - {-1})]
    if not per_class:
        per_class = [list(range(len(labels)))]
    out: list[int] = []
    depth = 0
    while len(out) < count and any(depth < len(p) for p in per_class):
        out += [int(p[depth]) for p in per_class if depth < len(p)][:count - len(out)]
        depth += 1
    return out


def _batch(dataset: ImageDataset, indices: Sequence[int]) -> tuple[torch.Tensor, np.ndarray]:
    xs, ys = zip(*(dataset[int(i)] for i in indices))
    return torch.stack(list(xs)), np.asarray(ys)


def input_attributions(zm: ZooModel, dataset: ImageDataset, indices: Sequence[int], out: str | Path, *,
                       n_steps: int = 32, internal_batch_size: int = 16, layer: str = "last_conv",
                       class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Integrated Gradients and Layer Grad-CAM for ``indices`` of ``dataset``, w.r.t. the predicted class.

    IG uses the all-zero baseline in normalised input space (the data mean); Grad-CAM is taken at
    ``layer`` (default the last convolution) and upsampled bilinearly. One PNG per image
    (image | IG | Grad-CAM) is written into ``out``.

    Args:
        zm: the model.
        dataset: the data (its transform should be ``zm.transform()``).
        indices: the samples to explain.
        out: the output folder.
        n_steps: IG's integration steps.
        internal_batch_size: IG's batch of interpolated inputs.
        layer: Grad-CAM's layer spec.
        class_names: names for the titles (default: the model's).

    Returns:
        ``[{"index", "label", "prediction", "path", ...}]``, one per image.

    Raises:
        InspectnetError: no image is chosen.
    """
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

    if not indices:
        raise InspectnetError("no images chosen for attributions")
    out = Path(out)
    names = list(class_names or zm.class_names)
    model = zm.model
    conv_name = resolve_layers(model, layer, head_name=zm.head_name)[-1]
    conv = model.get_submodule(conv_name)
    x, y = _batch(dataset, indices)
    with eval_mode(model):
        with torch.no_grad():
            pred = model(x).argmax(1)
        ig = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=pred, n_steps=n_steps,
                                                  internal_batch_size=internal_batch_size)
        cam = LayerGradCam(model, conv).attribute(x, target=pred, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
    ig_map = ig.detach().abs().sum(1).numpy()
    cam_map = cam.detach().sum(1).numpy()
    rows = []
    for j, i in enumerate(indices):
        img = display_image(dataset, i, tuple(x.shape[2:]))
        p, lab = int(pred[j]), int(y[j])
        path = _grid_png([[img, heat_overlay(img, ig_map[j]), heat_overlay(img, cam_map[j])]],
                         [["input", "Integrated Gradients", f"Grad-CAM {conv_name}"]], out / f"attr_{j:03d}.png")
        rows.append({"index": int(i), "name": dataset.name(i), "label": lab,
                     "label_name": names[lab] if 0 <= lab < len(names) else None, "prediction": p,
                     "prediction_name": names[p] if p < len(names) else str(p), "path": str(path),
                     "gradcam_layer": conv_name, "ig_steps": n_steps})
    return rows


def feature_maps(zm: ZooModel, x: torch.Tensor) -> torch.Tensor:
    """The (N, d, h, w) map whose global pooling gives the head's input features f(x).

    Uses timm's ``forward_features`` and reads its output by layout: channels-first maps as they are,
    channels-last maps (Swin) permuted, tokens on their patch grid without class, distillation or
    register tokens. Refuses when its channels do not match the head's input (a projection between the
    last map and the classifier), and, for channels-last maps and tokens, when the average of the map
    is not f(x) (a head that reads the class token, or a norm after pooling).

    Args:
        zm: the model.
        x: a batch of preprocessed images (N, C, H, W).

    Returns:
        The maps, units on axis 1.

    Raises:
        InspectnetError: the model has no ``forward_features``, its maps do not have the head's channels, or
            their average is not the head's input.

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=2, input_size=64)
        >>> feature_maps(zm, torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 512, 2, 2])
    """
    from inspectnet.models.layers import PRE_LOGITS
    from inspectnet.models.layout import layer_layout
    from inspectnet.probe.hooks import Probe

    model = zm.model
    if not hasattr(model, "forward_features"):
        raise InspectnetError(f"{zm.spec} has no forward_features(); the spatial maps of the penultimate "
                              f"features cannot be located (timm models provide it)")
    with eval_mode(model), torch.no_grad(), Probe(model, [PRE_LOGITS], head_name=zm.head_name) as probe:
        out = model.forward_features(x)
        model(x)
    d = zm.head.in_features
    layout = layer_layout(model, "forward_features", out, input_shape=tuple(x.shape)) if out.dim() in (3, 4) \
        else None
    maps = layout.maps(out) if layout is not None else out
    if maps.ndim != 4 or maps.shape[1] != d:
        raise InspectnetError(f"{zm.spec}: forward_features gives shape {tuple(out.shape)}, not a map of {d} channels "
                              f"(N, {d}, h, w), (N, h, w, {d}) or tokens (N, L, {d}); the head's features are not "
                              f"a pooled map of it")
    f = probe.outputs[PRE_LOGITS].flatten(1)
    if layout.kind != "NCHW" and not torch.allclose(maps.mean((2, 3)), f, atol=1e-4 * (1 + float(f.abs().max()))):
        raise InspectnetError(f"{zm.spec}: the head's features are not the average of forward_features' "
                              f"{layout.describe()} (the head reads a class token, or normalises after pooling)")
    return maps


def influential_feature_maps(zm: ZooModel, dataset: ImageDataset, labels: np.ndarray, supports: list[list[int]],
                             out: str | Path, *, per_class: int = 3, max_classes: int = 20,
                             class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """For each class c: one image of class c and the maps of its top ``per_class`` features of S_c.

    ``supports[c]`` is ordered by frequency (as :class:`~inspectnet.analysis.heads.influence.InfluenceMap` stores
    it). Each map is shown at its own resolution, upsampled by repeating cells (nearest: a 2×2 map
    shows as four blocks, not as a smooth blob), with a colour bar of its values; a feature that is
    zero everywhere on the image is titled so. One ``class_XXX.png`` is written per class.

    Args:
        zm: the model.
        dataset: the data (its transform should be ``zm.transform()``).
        labels: one label per sample (in the model's label space).
        supports: per class, its influential features, most frequent first.
        out: the output folder.
        per_class: features shown per class.
        max_classes: the most classes shown.
        class_names: names for the titles (default: the model's).

    Returns:
        ``[{"class", "features", "zero_features", "map_size", "index", "path"}]``.

    Raises:
        InspectnetError: no class has both an influential feature set and an image.
    """
    out = Path(out)
    names = list(class_names or zm.class_names)
    labels = np.asarray(labels)
    chosen = [(c, int(np.flatnonzero(labels == c)[0])) for c in range(len(supports))
              if supports[c] and (labels == c).any()][:max_classes]
    if not chosen:
        raise InspectnetError("no class has both an influential feature set and an image to show it on")
    x, _ = _batch(dataset, [i for _, i in chosen])
    maps = feature_maps(zm, x)
    up = F.interpolate(maps, size=tuple(x.shape[2:]), mode="nearest").numpy()
    map_size = [int(v) for v in maps.shape[2:]]
    rows = []
    for j, (c, i) in enumerate(chosen):
        img = display_image(dataset, i, tuple(x.shape[2:]))
        feats = supports[c][:per_class]
        zero = [f for f in feats if not maps[j, f].abs().max() > 0]
        pics = [img] + [heat_overlay(img, up[j, f]) for f in feats]
        titles = ["input"] + [f"feature {f}" + (": 0 here" if f in zero else "") for f in feats]
        scales = [None] + [(float(maps[j, f].min()), float(maps[j, f].max())) for f in feats]
        path = _grid_png([pics], [titles], out / f"class_{c:03d}.png", scales=[scales])
        rows.append({"class": c, "class_name": names[c] if c < len(names) else str(c), "features": feats,
                     "zero_features": zero, "map_size": map_size, "input_size": list(x.shape[2:]),
                     "index": i, "path": str(path)})
    return rows


def receptive_fields(zm: ZooModel, dataset: ImageDataset, activations: np.ndarray, layer: str, units: Sequence[int],
                     out: str | Path, *, top_n: int = 4, quantile: float = 0.99, sample: int = 128,
                     batch_size: int = 32) -> list[dict[str, Any]]:
    """Top-``top_n`` images of each unit (by the record's per-image activation) with its thresholded map.

    The threshold of unit k is its ``quantile`` over all pixels of its maps on the first ``sample``
    images (Network Dissection's T_k on a sample); the mask is the bilinearly upsampled map > T_k.
    A tile whose map nowhere exceeds T_k (a high mean activation spread thinly) has no highlight; it is
    titled so and counted in ``empty_tiles``.

    Args:
        zm: the model.
        dataset: the data (its transform should be ``zm.transform()``).
        activations: the (N, K) record matrix of ``layer`` for ``dataset``'s first N images.
        layer: the layer whose units are shown.
        units: the units.
        out: the output folder.
        top_n: images per unit.
        quantile: the pixel quantile that sets each unit's threshold.
        sample: images the thresholds are computed on.
        batch_size: images per forward pass.

    Returns:
        One dict per unit with its images, threshold, ``empty_tiles`` and ``path``.

    Raises:
        InspectnetError: no unit is chosen.
    """
    from inspectnet.analysis.dissect.dissection import unit_masks
    from inspectnet.probe.hooks import Probe
    from inspectnet.reports.html import overlay

    if not units:
        raise InspectnetError(f"no units chosen for receptive fields of {layer!r}")
    out = Path(out)
    acts = np.asarray(activations)
    unit_ids = torch.tensor(list(units), dtype=torch.long)
    n = min(sample, len(acts))
    model = zm.model
    pixels: list[torch.Tensor] = []
    with eval_mode(model), torch.inference_mode(), Probe(model, [layer], reducer="full",
                                                         head_name=zm.head_name) as probe:
        for s in range(0, n, batch_size):
            x, _ = _batch(dataset, range(s, min(n, s + batch_size)))
            model(x)
            pixels.append(probe.outputs[layer][:, unit_ids].transpose(0, 1).flatten(1).float())
        thresholds = torch.quantile(torch.cat(pixels, dim=1), quantile, dim=1)
        tops = {k: [int(i) for i in np.argsort(-acts[:, k], kind="stable")[:top_n]] for k in units}
        rows, titles, meta = [], [], []
        for k, t in zip(units, thresholds):
            x, _ = _batch(dataset, tops[k])
            model(x)
            size = tuple(x.shape[2:])
            masks = unit_masks(probe.outputs[layer][:, [k]].float(), t.reshape(1), size)[:, 0].numpy()
            rows.append([overlay(display_image(dataset, i, size), m) for i, m in zip(tops[k], masks)])
            titles.append([f"unit {k}: " + (dataset.name(i)[:18] if m.any() else "nothing > T_k")
                           for i, m in zip(tops[k], masks)])
            meta.append({"unit": int(k), "threshold": float(t), "top_images": tops[k],
                         "mean_activation": float(acts[:, k].mean()),
                         "empty_tiles": int(sum(not m.any() for m in masks))})
    path = _grid_png(rows, titles, out / "receptive_fields.png")
    return [{**m, "path": str(path)} for m in meta]
