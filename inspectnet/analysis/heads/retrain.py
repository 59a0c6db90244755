"""Fine-tuning a decomposed head's supported weights on a record's features (the backbone stays frozen)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from inspectnet.core.errors import InspectnetError
from inspectnet.models.heads import DecomposedLinear
from inspectnet.models.layers import model_state


def retrain_head(head: DecomposedLinear, features: np.ndarray, labels: np.ndarray, *, epochs: int = 1,
                 lr: float = 0.1, batch_size: int = 64, seed: int = 0) -> list[dict[str, float]]:
    """Fine-tune only the supported weights (and bias) of ``head`` in place with cross-entropy.

    The backbone is frozen and in eval mode, so training on a record's features is the same as
    training through the backbone, without re-running it. Off-support weights stay exactly zero.
    ``features`` may be a record's memory-mapped array: each mini-batch reads only its own rows.

    Args:
        head: the decomposed head, changed in place.
        features: (N, d) features.
        labels: (N,) labels (-1 = skipped).
        epochs: passes over the labelled rows.
        lr: the SGD learning rate.
        batch_size: rows per step.
        seed: seeds the row order.

    Returns:
        ``[{"epoch", "loss"}]``, one per epoch.

    Raises:
        InspectnetError: ``epochs`` is below 1.
    """
    if epochs < 1:
        raise InspectnetError(f"--retrain-epochs must be at least 1, got {epochs}")
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.flatnonzero(labels >= 0)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)

    def batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pick = rows[idx.numpy()]
        x = torch.from_numpy(np.asarray(features[pick], dtype=np.float32)).to(head.weight.device)
        return x, torch.from_numpy(labels[pick]).to(head.weight.device)

    with model_state(head, training=True):
        return [{"epoch": epoch + 1, "loss": _retrain_epoch(head, batch, len(rows), opt, gen, batch_size)}
                for epoch in range(epochs)]


def _retrain_epoch(head: DecomposedLinear, batch, n: int, opt: torch.optim.Optimizer,
                   gen: torch.Generator, batch_size: int) -> float:
    """One shuffled pass over ``n`` samples read by ``batch(indices)``; returns the mean loss."""
    order = torch.randperm(n, generator=gen)
    total = 0.0
    for start in range(0, n, batch_size):
        x, y = batch(order[start:start + batch_size])
        loss = F.cross_entropy(head(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # belt and braces: the masked forward already gives them zero gradient
            head.weight.mul_(head.mask)
        total += loss.item() * len(y)
    return total / n
