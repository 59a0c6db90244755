"""Unit masks against concept masks: thresholded, upsampled unit maps, their overlaps with the concept masks and the IoU."""

import numpy as np
import torch
import torch.nn.functional as F

from inspectnet.analysis.dissect.upsample import CellUpsampler


def unit_overlaps(maps: torch.Tensor, masks: torch.Tensor, thresholds: torch.Tensor,
                  mask_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's intersections (K, C) and active areas (K,) (float64) of thresholded, upsampled unit maps.

    Only the upsampled cells whose corners exceed the threshold are evaluated (:class:`CellUpsampler`);
    the result is that of upsampling everything.

    Args:
        maps: (B, K, h, w) maps.
        masks: (B, C, H·W) concept masks, 0/1 or bool.
        thresholds: (K,) thresholds.
        mask_size: (H, W).

    Returns:
        ``(intersections (K, C), areas (K,))``.

    Examples:
        >>> maps = torch.tensor([[[[0., 1.], [0., 1.]]]])
        >>> unit_overlaps(maps, torch.ones(1, 1, 16), torch.tensor([0.5]), (4, 4))
        (tensor([[8.]], dtype=torch.float64), tensor([8.], dtype=torch.float64))
    """
    units, concepts = maps.shape[1], masks.shape[1]
    pixels = mask_size[0] * mask_size[1]
    table = masks.transpose(1, 2).reshape(-1, concepts).double()
    inter = torch.zeros(units, concepts, dtype=torch.float64, device=maps.device)
    area = torch.zeros(units, dtype=torch.float64, device=maps.device)
    for sel in CellUpsampler(tuple(maps.shape[2:]), mask_size, maps.device).above(maps.float(), thresholds):
        area.index_add_(0, sel.units, torch.ones_like(sel.values, dtype=torch.float64))
        inter.index_add_(0, sel.units, table[sel.images * pixels + sel.pixels])
    return inter, area


def unit_masks(maps: torch.Tensor, thresholds: torch.Tensor, mask_size: tuple[int, int]) -> torch.Tensor:
    """Binary unit masks S_k: maps upsampled bilinearly to ``mask_size``, then ``> T_k``.

    Args:
        maps: (B, K, h, w) maps.
        thresholds: (K,) thresholds.
        mask_size: (H, W).

    Returns:
        (B, K, H, W) bool masks.

    Examples:
        >>> unit_masks(torch.tensor([[[[0., 1.]]]]), torch.tensor([0.5]), (1, 4)).int().tolist()
        [[[[0, 0, 1, 1]]]]
    """
    if tuple(maps.shape[2:]) != tuple(mask_size):
        maps = F.interpolate(maps, size=mask_size, mode="bilinear", align_corners=False)
    return maps > thresholds.to(maps.device, maps.dtype)[None, :, None, None]


def iou_from_counts(inter: torch.Tensor, act_area: torch.Tensor, mask_area: torch.Tensor) -> np.ndarray:
    """IoU = Σ∩ / Σ∪ with Σ∪ = |S_k| + |L_c| − Σ∩; an empty union (nothing active, no concept pixel) gives 0.

    Args:
        inter: (K, C) intersections.
        act_area: (K,) unit areas.
        mask_area: (C,) concept areas.

    Returns:
        The (K, C) IoU.

    Examples:
        >>> iou_from_counts(torch.tensor([[2.]]), torch.tensor([4.]), torch.tensor([3.]))
        array([[0.4]])
    """
    inter = inter.double()
    union = act_area.double()[:, None] + mask_area.double()[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    return iou.numpy()
