"""Faithfulness of explanation maps, measured on the model in batches: deletion, insertion and ROAD.

Each map is upsampled (bilinear) to the input and its pixels ranked most-relevant first (ties broken
by a seeded random order). At fractions 0, 1/steps, …, 1 of the pixels:

* **deletion** replaces the top-ranked pixels by the *baseline* and records the softmax probability
  of the target class (lower area under the curve = more faithful);
* **insertion** starts from the baseline and restores the top-ranked pixels (higher AUC = better).

The baseline is named and fixed per run: ``blur`` (a Gaussian blur of the image, σ = 1/8 of its
shorter side, reflect padding) or ``mean`` (the image's mean colour per channel). The two curves
share their end points (the image and the baseline), so they cost 2·steps forward passes per image.

**ROAD** (Rong et al. 2022, "A consistent and efficient evaluation strategy for attribution
methods") removes a fraction of the pixels — most relevant first (MoRF, lower is better) or least
relevant first (LeRF, higher is better) — and fills them by *noisy linear imputation*: each removed
pixel equals the weighted mean of its 8 neighbours (weight 1/6 for the 4 direct, 1/12 for the
diagonal ones), kept pixels fixed, plus N(0, noise²); the mask's shape then leaks no class
information. :func:`linear_imputation` solves that linear system for a whole batch on the model's
device (conjugate gradients from a coarse-to-fine start); inputs larger than ``road_size`` (32 px)
are solved on a 32-px grid and upsampled (:func:`road_fill`: ROAD "where it fits" on a CPU).

Maps that are constant (no ranking) or hold NaN are reported per image (``status``) and skipped,
never crashed on. :func:`compare_to_control` pairs a method's per-image AUCs with the random
control's on the same images (a run on a small model: :func:`faithfulness_curves`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from inspectnet.core.errors import InspectnetError
from inspectnet.core.options import option, seed_option, validate
from inspectnet.runtime.overlays import map_status

BASELINES = ("blur", "mean")
Scorer = Callable[[torch.Tensor], torch.Tensor]  # model inputs (B, C, H, W) -> logits (B, classes)


@dataclasses.dataclass(frozen=True)
class FaithfulnessConfig:
    """Deletion/insertion ``steps``, the ``baseline`` (blur or mean), the ROAD fractions and noise, batching.

    Raises:
        InspectnetError: an option out of its range (checked when built).
    """

    steps: int = option(10, help="steps of the deletion and insertion curves", minimum=1)
    baseline: str = option("blur", help="what deleted pixels become: a blurred image or its mean colour",
                           choices=BASELINES)
    road_fractions: tuple[float, ...] = option((0.2, 0.4, 0.6, 0.8), help="fractions of pixels ROAD removes",
                                               above=0, below=1)
    road_noise: float = option(0.01, help="noise ROAD adds to imputed pixels", minimum=0, finite=True)
    road_size: int = option(32, help="side ROAD's imputation runs at", minimum=1)
    batch_size: int = option(64, help="images per forward pass", minimum=1)
    seed: int = seed_option("seed of ROAD's noise")

    def __post_init__(self) -> None:
        validate(self)

    def passes_per_image(self) -> int:
        """Forward passes one explained image costs.

        Returns:
            2·steps (deletion + insertion) + 2 per ROAD fraction.
        """
        return 2 * self.steps + 2 * len(self.road_fractions)


def baseline_images(images: torch.Tensor, kind: str) -> torch.Tensor:
    """The image deleted pixels become: a blurred copy or the mean colour.

    Args:
        images: (B, C, H, W) images.
        kind: ``blur`` (Gaussian, σ = 1/8 of the shorter side) or ``mean`` (per-image, per-channel colour).

    Returns:
        The (B, C, H, W) baseline images.

    Examples:
        >>> baseline_images(torch.ones(1, 3, 16, 16), "blur").allclose(torch.ones(1, 3, 16, 16))
        True
    """
    if kind == "mean":
        return images.mean((2, 3), keepdim=True).expand_as(images).clone()
    sigma = min(images.shape[2:]) / 8.0
    radius = min(int(math.ceil(3 * sigma)), min(images.shape[2:]) - 1)
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
                   groups=c)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1),
                    groups=c)


_STENCIL = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


def linear_imputation(images: torch.Tensor, known: torch.Tensor, *, tolerance: float = 1e-5,
                      max_iterations: int = 500) -> torch.Tensor:
    """ROAD's linear imputation (without noise) of the pixels not ``known``.

    Removed pixels solve x_p = Σ_q w_q x_q / Σ_q w_q over their in-image 8-neighbours; kept pixels stay.

    The system (symmetric positive definite wherever some pixel is kept) is solved for every image
    and channel at once by conjugate gradients, until each residual's RMS is below ``tolerance``
    times the image's value range (or ``max_iterations``).

    Args:
        images: (B, C, H, W) images.
        known: (B, 1, H, W) bool, True where a pixel is kept.
        tolerance: the residual RMS to reach, relative to each image's value range.
        max_iterations: the most conjugate-gradient steps.

    Returns:
        The (B, C, H, W) images with the removed pixels imputed.

    Examples:
        >>> x = torch.tensor([[[[0.0, 0.0, 3.0]]]]); known = torch.tensor([[[[True, False, True]]]])
        >>> [round(v, 4) for v in linear_imputation(x, known)[0, 0, 0].tolist()]
        [0.0, 1.5, 3.0]
    """
    c = images.shape[1]
    unknown = (~known.bool()).to(images.dtype).expand_as(images)
    stencil = _STENCIL.to(images).view(1, 1, 3, 3).repeat(c, 1, 1, 1)
    degree = F.conv2d(torch.ones_like(images[:1]), stencil, padding=1, groups=c)  # in-image neighbour weights

    def neighbours(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, stencil, padding=1, groups=c)

    def operator(v: torch.Tensor) -> torch.Tensor:  # the system on the unknown pixels (v is 0 elsewhere)
        return unknown * (degree * v - neighbours(v))

    kept = images * (1 - unknown)
    rhs = unknown * neighbours(kept)
    y = unknown * _coarse_start(images, known, tolerance, max_iterations)
    r = rhs - operator(y)
    p = r.clone()
    rs = (r * r).sum((2, 3), keepdim=True)
    count = unknown.sum((2, 3), keepdim=True).clamp_min(1.0)
    span = (images.amax((2, 3), keepdim=True) - images.amin((2, 3), keepdim=True)).clamp_min(1e-12)
    for _ in range(max_iterations):
        if bool(((rs / count).sqrt() <= tolerance * span).all()):
            break
        ap = operator(p)
        alpha = rs / (p * ap).sum((2, 3), keepdim=True).clamp_min(1e-30)
        y = y + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum((2, 3), keepdim=True)
        p = r + (rs_new / rs.clamp_min(1e-30)) * p
        rs = rs_new
    return kept + y


def _coarse_start(images: torch.Tensor, known: torch.Tensor, tolerance: float, max_iterations: int,
                  min_size: int = 8) -> torch.Tensor:
    """A starting point for the solver: the same problem solved at half resolution, upsampled.

    A coarse cell is kept where any of its pixels is, at their mean; on the coarsest grid, the kept pixels' mean.
    """
    known = known.bool()
    if min(images.shape[2:]) <= min_size:
        weight = known.to(images.dtype)
        mean = (images * weight).sum((2, 3), keepdim=True) / weight.sum((2, 3), keepdim=True).clamp_min(1.0)
        return mean.expand_as(images)
    weight = F.avg_pool2d(known.to(images.dtype), 2, ceil_mode=True)
    coarse = F.avg_pool2d(images * known, 2, ceil_mode=True) / weight.clamp_min(1e-12)
    solved = linear_imputation(coarse, weight > 0, tolerance=tolerance, max_iterations=max_iterations)
    return F.interpolate(solved, size=images.shape[2:], mode="bilinear", align_corners=False)


def road_fill(images: torch.Tensor, removed: torch.Tensor, size: int) -> torch.Tensor:
    """The linear imputation of the ``removed`` pixels (B, 1, H, W); exact up to ``size`` pixels a side.

    Larger inputs are solved on a grid of at most ``size`` pixels a side (images area-averaged, a
    cell removed when at least half of it is) and the solution upsampled bilinearly: the exact
    solve grows with the pixel count and the hole diameter, too slow at 224 px on a CPU.

    Args:
        images: (B, C, H, W) images.
        removed: (B, 1, H, W) bool, True where a pixel is removed.
        size: the largest side solved exactly.

    Returns:
        The (B, C, H, W) images with the removed pixels imputed (see :func:`linear_imputation`).
    """
    h, w = images.shape[2:]
    if max(h, w) <= size:
        return linear_imputation(images, ~removed)
    small = (max(1, round(h * size / max(h, w))), max(1, round(w * size / max(h, w))))
    kept = F.interpolate((~removed).to(images.dtype), size=small, mode="area") > 0.5
    solved = linear_imputation(F.interpolate(images, size=small, mode="area"), kept)
    return F.interpolate(solved, size=(h, w), mode="bilinear", align_corners=False)


def pixel_ranks(maps: torch.Tensor, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Each pixel's rank (0 = most relevant) after upsampling ``maps`` to ``size``.

    Ties are broken by a seeded random order, so flat regions (e.g. Grad-CAM zeros) are not removed
    in raster order.

    Args:
        maps: (N, h, w) explanation maps.
        size: (H, W) of the input.
        seed: seeds the tie-breaking order.

    Returns:
        (N, H·W) int64 ranks.

    Examples:
        >>> pixel_ranks(torch.tensor([[[0.1, 0.9], [0.5, 0.3]]]), (2, 2), 0).tolist()
        [[3, 0, 1, 2]]
    """
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False).flatten(1)
    n, p = up.shape
    gen = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(p, generator=gen) for _ in range(n)]).to(up.device)
    order = perm.gather(1, torch.argsort(-up.gather(1, perm), dim=1, stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(p, device=up.device).expand(n, -1))
    return ranks


@dataclasses.dataclass(frozen=True)
class Curves:
    """Per-image curves of the target-class probability (NaN rows for skipped maps) and what they cost.

    Attributes:
        fractions: the deletion/insertion fractions; ``deletion``, ``insertion`` (N, steps + 1) their curves.
        road_fractions: ROAD's fractions; ``road_morf``, ``road_lerf`` (N, fractions) its curves.
        status: per map ``ok``, ``constant`` or ``nan`` (only ``ok`` maps are measured).
        forward_passes: every input the scorer was given; ``baseline``: the baseline kind.
    """

    fractions: list[float]
    deletion: np.ndarray
    insertion: np.ndarray
    road_fractions: list[float]
    road_morf: np.ndarray
    road_lerf: np.ndarray
    status: list[str]
    forward_passes: int
    baseline: str


def faithfulness_curves(score: Scorer, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                        config: FaithfulnessConfig = FaithfulnessConfig()) -> Curves:
    """Deletion, insertion and ROAD curves for ``images`` (N, C, H, W) explained by ``maps`` (N, h, w).

    Args:
        score: model inputs (B, C, H, W) -> logits (B, classes), torch or ONNX Runtime, on ``images``' device;
            given at most ``config.batch_size`` inputs at a time (``forward_passes`` counts them).
        images: (N, C, H, W) the explained images.
        maps: (N, h, w) their explanation maps.
        targets: (N,) the class each map explains.
        config: steps, baseline, ROAD settings and batching.

    Returns:
        The :class:`Curves`.

    Raises:
        InspectnetError: the numbers of images, maps and targets differ.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
        >>> cfg = FaithfulnessConfig(steps=2, road_fractions=(0.5,))
        >>> c = faithfulness_curves(net, torch.rand(2, 3, 8, 8), torch.rand(2, 4, 4), torch.tensor([0, 1]), cfg)
        >>> c.deletion.shape, c.road_morf.shape, c.status
        ((2, 3), (2, 1), ['ok', 'ok'])
    """
    if len(images) != len(maps) or len(images) != len(targets):
        raise InspectnetError(f"faithfulness needs one map and one target per image; got {len(images)} images, "
                              f"{len(maps)} maps, {len(targets)} targets")
    n, (h, w) = len(images), images.shape[2:]
    status = [map_status(m.cpu().numpy()) for m in maps]
    fr = [i / config.steps for i in range(config.steps + 1)]
    rows = {k: np.full((n, len(v)), np.nan) for k, v in (("deletion", fr), ("insertion", fr),
                                                          ("road_morf", config.road_fractions),
                                                          ("road_lerf", config.road_fractions))}
    ok = [i for i, s in enumerate(status) if s == "ok"]
    counter = _Counter(score, config.batch_size)
    chunk = max(1, config.batch_size // 4)
    gen = torch.Generator().manual_seed(config.seed)
    for start in range(0, len(ok), chunk):
        idx = ok[start:start + chunk]
        x = images[idx]
        ranks = pixel_ranks(maps[idx].to(x.device), (h, w), config.seed + start).view(len(idx), 1, h, w)
        base = baseline_images(x, config.baseline)
        t = targets[idx].to(x.device)
        probs = counter.probabilities([x, base] + [_replace(x, base, ranks, f) for f in fr[1:-1]]
                                      + [_replace(base, x, ranks, f) for f in fr[1:-1]], t)
        mid = probs[2:]
        rows["deletion"][idx] = np.column_stack([probs[0], *mid[:len(fr) - 2], probs[1]])
        rows["insertion"][idx] = np.column_stack([probs[1], *mid[len(fr) - 2:], probs[0]])
        p = h * w
        road = []
        for most_first in (True, False):
            for f in config.road_fractions:
                removed = ranks < round(f * p) if most_first else ranks >= round((1 - f) * p)
                noise = torch.randn(x.shape, generator=gen).to(x.device) * config.road_noise
                road.append(torch.where(removed, road_fill(x, removed, config.road_size) + noise, x))
        probs = counter.probabilities(road, t)
        r = len(config.road_fractions)
        rows["road_morf"][idx] = np.column_stack(probs[:r])
        rows["road_lerf"][idx] = np.column_stack(probs[r:])
    return Curves(fractions=fr, road_fractions=list(config.road_fractions), status=status,
                  forward_passes=counter.count, baseline=config.baseline, **rows)


def _replace(x: torch.Tensor, by: torch.Tensor, ranks: torch.Tensor, fraction: float) -> torch.Tensor:
    """``x`` with its top ``fraction`` of pixels (by rank) taken from ``by``."""
    return torch.where(ranks < round(fraction * ranks[0].numel()), by, x)


class _Counter:
    """Scores lists of input batches in batches of ``batch_size`` and counts every input scored."""

    def __init__(self, score: Scorer, batch_size: int):
        self.score, self.batch_size, self.count = score, batch_size, 0

    def probabilities(self, variants: list[torch.Tensor], targets: torch.Tensor) -> list[np.ndarray]:
        """Per variant (each (n, C, H, W)), the softmax probability of ``targets`` (n,)."""
        stacked = torch.cat(variants)
        out = []
        for s in range(0, len(stacked), self.batch_size):
            batch = stacked[s:s + self.batch_size]
            with torch.no_grad():
                out.append(torch.softmax(self.score(batch).float(), dim=1).cpu())
            self.count += len(batch)
        probs = torch.cat(out).view(len(variants), len(targets), -1)
        picked = probs.gather(2, targets.cpu().view(1, -1, 1).expand(len(variants), -1, 1))[..., 0]
        return [row.numpy().astype(np.float64) for row in picked]


def auc(curve: np.ndarray, fractions: list[float]) -> np.ndarray:
    """Area under each row of ``curve`` over ``fractions`` (trapezoid), normalised by the fractions' span.

    Args:
        curve: (N, F) curves.
        fractions: the F fractions they are sampled at.

    Returns:
        The (N,) areas.

    Examples:
        >>> auc(np.array([[1.0, 0.0]]), [0.0, 1.0]).tolist()
        [0.5]
    """
    f = np.asarray(fractions, dtype=np.float64)
    return np.trapezoid(curve, f, axis=1) / (f[-1] - f[0])


def per_image_scores(c: Curves) -> dict[str, np.ndarray]:
    """Per-image deletion/insertion AUC and ROAD MoRF/LeRF mean probability (NaN where skipped).

    Args:
        c: the curves.

    Returns:
        ``{"deletion_auc", "insertion_auc", "road_morf", "road_lerf"}``, each (N,).
    """
    return {"deletion_auc": auc(c.deletion, c.fractions), "insertion_auc": auc(c.insertion, c.fractions),
            "road_morf": c.road_morf.mean(1), "road_lerf": c.road_lerf.mean(1)}


def summarise(c: Curves) -> dict[str, Any]:
    """Mean and standard error of each score over the images whose maps could be ranked, and the skips.

    Args:
        c: the curves.

    Returns:
        ``{"images", "evaluated", "constant_maps", "nan_maps", "baseline"}`` and each score's mean and ``_se``.
    """
    out: dict[str, Any] = {"images": len(c.status), "evaluated": c.status.count("ok"),
                           "constant_maps": c.status.count("constant"), "nan_maps": c.status.count("nan"),
                           "baseline": c.baseline}
    return {**out, **mean_and_se(per_image_scores(c))}


def mean_and_se(scores: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Mean and standard error (None where too few) of each per-image score over the images where it is finite.

    Args:
        scores: score name -> per-image values (NaN where not measured).

    Returns:
        ``{name: mean, name_se: standard error}``.

    Examples:
        >>> {k: round(v, 6) for k, v in mean_and_se({"auc": np.array([0.2, np.nan, 0.4])}).items()}
        {'auc': 0.3, 'auc_se': 0.1}
    """
    out: dict[str, float | None] = {}
    for name, values in scores.items():
        v = values[np.isfinite(values)]
        out[name] = float(v.mean()) if len(v) else None
        out[name + "_se"] = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
    return out


def compare_to_control(method: Curves, control: Curves) -> dict[str, Any]:
    """Paired per-image differences method − control, their standard errors, and ``beats_control``.

    Deletion/MoRF: negative is better, insertion/LeRF: positive; ``beats_control``: both by over two errors.

    Args:
        method: the method's curves.
        control: the control's curves, on the same images in the same order.

    Returns:
        As :func:`paired_differences`.
    """
    return paired_differences(per_image_scores(method), per_image_scores(control))


def paired_differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean and standard error of the per-image differences ``a[name] − b[name]``.

    NaN pairs are left out; also the paired image count and ``beats_control`` (:func:`compare_to_control`).

    Args:
        a: score name -> per-image values of the method; must hold ``deletion_auc`` and ``insertion_auc``.
        b: the same for the control, on the same images in the same order.

    Returns:
        ``{name: mean, name_se: standard error, paired_images, beats_control}``.

    Examples:
        >>> d = paired_differences({"deletion_auc": np.array([0.1, 0.2]), "insertion_auc": np.array([0.9, 0.8])},
        ...                        {"deletion_auc": np.array([0.5, 0.5]), "insertion_auc": np.array([0.5, 0.6])})
        >>> round(d["deletion_auc"], 3), round(d["deletion_auc_se"], 3), d["beats_control"]
        (-0.35, 0.05, True)
    """
    out: dict[str, Any] = mean_and_se({name: a[name] - b[name] for name in a})
    out["paired_images"] = int(np.isfinite(a["deletion_auc"] - b["deletion_auc"]).sum())
    out["beats_control"] = bool(out["deletion_auc_se"] is not None and out["insertion_auc_se"] is not None
                                and out["deletion_auc"] + 2 * out["deletion_auc_se"] < 0
                                and out["insertion_auc"] - 2 * out["insertion_auc_se"] > 0)
    return out
