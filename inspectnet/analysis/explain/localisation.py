"""Localisation of explanation maps on data whose objects are known pixel by pixel.

The measure is the energy-based pointing game (Wang et al. 2020, "Score-CAM: Score-weighted visual
explanations for convolutional neural networks", §5.2).

For each image the map L is upsampled (bilinear, as the faithfulness metrics do) to the model's
input, only its positive part is kept (the evidence *for* the class), and the score is the share
of that energy inside the object mask M:

    proportion = Σ_{M} max(L, 0) / Σ max(L, 0)

Score-CAM draws a bounding box; exact masks are tighter, so a map that spreads its energy uniformly
scores the objects' share of the image (reported as ``object_share``: the chance level, which
the random control should sit near). A map with no positive energy cannot point anywhere: its
image is counted in ``no_positive_energy`` and left out of the mean.

>>> maps = torch.tensor([[[1.0, -1.0], [2.0, 0.0]]]); masks = torch.tensor([[[True, False], [False, False]]])
>>> energy_pointing_game(maps, masks).round(4).tolist()
[0.3333]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from inspectnet.core.errors import InspectnetError
from inspectnet.runtime.classifier import crop_view


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Per image, the share of the map's positive energy that falls inside the object mask.

    Args:
        maps: (N, h, w) explanation maps, higher = more relevant to the class (any sign).
        masks: (N, H, W) bool object masks at the resolution the maps are upsampled to.

    Returns:
        (N,) float64 proportions in [0, 1]; NaN where a map has no positive energy (or holds NaN).

    Raises:
        InspectnetError: maps or masks not three-dimensional, or their image counts differ.

    Examples:
        >>> energy_pointing_game(torch.tensor([[[4.0, 0.0]]]), torch.tensor([[[True, True, False, False]] * 2]))
        array([0.875])
    """
    if maps.ndim != 3 or masks.ndim != 3 or len(maps) != len(masks):
        raise InspectnetError(f"the pointing game needs maps (N, h, w) and masks (N, H, W) for the same images; got "
                              f"{tuple(maps.shape)} and {tuple(masks.shape)}")
    up = F.interpolate(maps[:, None].double(), size=tuple(masks.shape[1:]), mode="bilinear", align_corners=False)[:, 0]
    energy = up.clamp_min(0.0)  # NaN stays NaN and makes the image's score NaN
    total = energy.sum((1, 2))
    inside = (energy * masks.to(energy.dtype)).sum((1, 2))
    share = torch.where(total > 0, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan")))
    return share.cpu().numpy()


def localisation_summary(scores: np.ndarray, masks: torch.Tensor, control: np.ndarray | None = None
                         ) -> dict[str, Any]:
    """Mean and standard error of the per-image pointing-game scores, with chance level and control.

    The chance level is ``object_share``, the masks' mean area share; the paired difference is with a control's scores on the
    same images.

    Args:
        scores: (N,) per-image proportions (NaN = no positive energy).
        masks: (N, H, W) the object masks the scores were computed on.
        control: (N,) the random control's proportions on the same images, or None.

    Returns:
        ``energy_pointing_game`` (mean) and ``_se``, ``evaluated``, ``no_positive_energy``,
        ``object_share`` (mean share of the image inside the mask) and, with a control,
        ``vs_random``: the mean paired difference and its standard error.

    Examples:
        >>> m = torch.tensor([[[True, False]], [[True, True]]])
        >>> localisation_summary(np.array([0.5, np.nan]), m)["object_share"], _mean_se(np.array([0.5, 0.7]))[0]
        (0.75, 0.6)
    """
    ok = np.isfinite(scores)
    mean, se = _mean_se(scores[ok])
    out: dict[str, Any] = {"energy_pointing_game": mean, "energy_pointing_game_se": se, "evaluated": int(ok.sum()),
                           "no_positive_energy": int((~ok).sum()),
                           "object_share": float(masks.double().mean((1, 2)).mean())}
    if control is not None:
        d = scores - control
        diff, diff_se = _mean_se(d[np.isfinite(d)])
        out["vs_random"] = {"difference": diff, "difference_se": diff_se}
    return out


def _mean_se(v: np.ndarray) -> tuple[float | None, float | None]:
    return (float(v.mean()) if len(v) else None,
            float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None)


def mask_view(mask: np.ndarray, config: dict[str, Any]) -> torch.Tensor:
    """An object mask at the model's input: (H, W) bool, resized and cropped as the image is.

    The mask goes through what the model's preprocessing does to the image
    (:func:`~inspectnet.runtime.classifier.crop_view`).

    Args:
        mask: (height, width) bool, aligned with the image.
        config: the model's data config (``input_size``, ``crop_pct``, ``crop_mode``, ``interpolation``).

    Returns:
        The mask the model's input sees (a resampled pixel counts as object when at least half is).

    Examples:
        >>> mask = np.zeros((4, 4), bool); mask[:2, :2] = True
        >>> mask_view(mask, {"input_size": [3, 2, 2], "crop_pct": 1.0}).tolist()
        [[True, False], [False, False]]
    """
    view = np.asarray(crop_view(Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255), config).convert("L"))
    return torch.from_numpy(view >= 128)
