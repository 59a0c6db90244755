"""Per-class feature contributions W[c, j]·f_j of a linear head: per sample, and as class means read from a probe record."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from inspectnet.core.streaming import row_blocks
from inspectnet.models.heads import DecomposedLinear

if TYPE_CHECKING:
    from inspectnet.probe.record import ProbeRecord


def class_contributions(head: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """Exact per-class contributions W[c, :] ⊙ f(x): (N, d) -> (N, C, d), no gradients.

    Summed over the last axis plus the bias they give the logits exactly (the head is linear).

    Args:
        head: the linear head.
        features: (N, d) features.

    Returns:
        (N, C, d) contributions.

    Examples:
        >>> head = nn.Linear(3, 2); f = torch.randn(4, 3)
        >>> torch.allclose(class_contributions(head, f).sum(-1) + head.bias, head(f), atol=1e-6)
        True
    """
    w = head.effective_weight() if isinstance(head, DecomposedLinear) else head.weight
    with torch.no_grad():
        return features[:, None, :] * w[None, :, :]


def _feature_blocks(record: ProbeRecord) -> Iterator[tuple[slice, torch.Tensor]]:
    """The record's features block by block, as float64 tensors (memory bounded by the block)."""
    feats = record.features
    for rows in row_blocks(len(feats)):
        yield rows, torch.from_numpy(np.array(feats[rows], dtype=np.float64))


def class_feature_means(record: ProbeRecord, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean of the features, and the per-class sample counts.

    Sums are accumulated block by block with ``index_add_`` in float64, so memory is O(C·d), never
    O(N·C·d); a class without samples has mean 0 and count 0.

    Args:
        record: the probe record.
        num_classes: C.

    Returns:
        ``(means (C, d) float64, counts (C,))``.

    Examples:
        >>> means, counts = class_feature_means(rec, 10)         # doctest: +SKIP
    """
    labels = np.asarray(record.labels)
    sums = torch.zeros(num_classes, record.features.shape[1], dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for rows, feats in _feature_blocks(record):
        y = torch.from_numpy(np.array(labels[rows], dtype=np.int64))
        keep = y >= 0
        sums.index_add_(0, y[keep], feats[keep])
        counts.index_add_(0, y[keep], torch.ones(int(keep.sum()), dtype=torch.float64))
    return sums / counts.clamp(min=1)[:, None], counts


def mean_contributions(weight: torch.Tensor, means: torch.Tensor, supports: list[list[int]]) -> list[list[float]]:
    """Mean over class c's samples of W[c, j]·f_j for each j ∈ S_c.

    That is exactly W[c, j]·mean_c(f_j), as the head is linear (means from :func:`class_feature_means`).

    Args:
        weight: the (C, d) head weight.
        means: the (C, d) per-class feature means.
        supports: per class, its features S_c.

    Returns:
        Per class, one mean contribution per feature of S_c, in S_c's order.

    Examples:
        >>> mean_contributions(torch.tensor([[2.0, 1.0]]), torch.tensor([[3.0, 5.0]]), [[1, 0]])
        [[5.0, 6.0]]
    """
    return [[float(weight[c, j] * means[c, j]) for j in s] for c, s in enumerate(supports)]
