"""Fingerprints of a network's weights: sha256 over the state dict's names, shapes, dtypes and bytes."""

import hashlib
from collections.abc import Iterable

import torch
from torch import nn


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex digits) over the state dict's names, shapes, dtypes and bytes.

    Args:
        model: the network.

    Returns:
        The fingerprint.

    Examples:
        >>> len(weights_fingerprint(nn.Linear(2, 2)))
        16
    """
    return state_fingerprint(model.state_dict().items())


def state_fingerprint(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """:func:`weights_fingerprint` of named tensors (a state dict's items, e.g. one read from a checkpoint).

    Args:
        tensors: ``(name, tensor)`` pairs, in state-dict order.

    Returns:
        The fingerprint (16 hex digits).

    Examples:
        >>> m = nn.Linear(2, 2)
        >>> state_fingerprint(m.state_dict().items()) == weights_fingerprint(m)
        True
    """
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
