"""Sparse activation functions φ of Sparsely Activated Networks (Bizopoulos & Koutsouris, DESIGN.md §5.4).

All act on maps of shape (B, C, L) (1-D signals) or (B, C, H, W) (images / feature maps), one map
per (sample, channel), and return a tensor of the same shape that is zero except at survivors
(which keep their input value, so gradients flow through them):

- ``identity``: everything survives.
- ``max_activations(s, k)``: the k largest entries of each map (ties broken by position).
- ``max_pool_indices(s, m)``: one survivor per m×m window, the entry of largest |s|:
  max_pool(|s|) with indices → gather s → max_unpool (not the paper code's one-window bug).
- ``peaks(s, d)``: local maxima (≥ their 3×3 / 3-neighbourhood, > 0), taken greedily by amplitude
  (ties: lower flat index first); a peak suppresses every other within Chebyshev distance < d.
  Vectorized iterative suppression, exact to that greedy definition (see :func:`peaks_reference`).

>>> s = torch.tensor([[[0.0, 3, 1, 2, 0, 5, 4]]])
>>> peaks(s, 2).tolist()
[[[0.0, 3.0, 0.0, 2.0, 0.0, 5.0, 0.0]]]
>>> peaks(s, 3).tolist()
[[[0.0, 3.0, 0.0, 0.0, 0.0, 5.0, 0.0]]]
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from inspectnet.core.errors import InspectnetError

ACTIVATIONS = ("identity", "max-activations", "max-pool-indices", "peaks")


def _as_2d(s: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if s.dim() == 3:
        return s.unsqueeze(2), True
    if s.dim() == 4:
        return s, False
    raise InspectnetError(f"sparse activations take (B, C, L) or (B, C, H, W) maps, got shape {tuple(s.shape)}")


def identity(s: torch.Tensor) -> torch.Tensor:
    return s


def max_activations(s: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest entries of each map.

    >>> max_activations(torch.tensor([[[1.0, 5, 3, 4]]]), 2).tolist()
    [[[0.0, 5.0, 0.0, 4.0]]]
    """
    flat = s.flatten(2)
    if k < 1:
        raise InspectnetError(f"max-activations: k={k} must be at least 1")
    k = min(k, flat.shape[2])
    idx = flat.topk(k, dim=2).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(2, idx, True)
    return (flat * mask).view_as(s)


def max_pool_indices(s: torch.Tensor, m: int) -> torch.Tensor:
    """One survivor per ``m``-wide window (m×m for images): the entry of largest magnitude.

    >>> max_pool_indices(torch.tensor([[[1.0, -4, 2, 3, 0]]]), 2).tolist()
    [[[0.0, -4.0, 0.0, 3.0, 0.0]]]
    """
    if m < 1:
        raise InspectnetError(f"max-pool-indices: window m={m} must be at least 1")
    x, one_d = _as_2d(s)
    kernel = (1, m) if one_d else (m, m)
    _, idx = F.max_pool2d(x.abs(), kernel, stride=kernel, ceil_mode=True, return_indices=True)
    kept = x.flatten(2).gather(2, idx.flatten(2)).view_as(idx)
    out = F.max_unpool2d(kept, idx, kernel, stride=kernel, output_size=x.shape[-2:])
    return out.squeeze(2) if one_d else out


def _priority(x: torch.Tensor) -> torch.Tensor:
    """Unique rank of each entry within its map: higher value first, then lower flat index (as float64,
    exact for maps of up to 2^53 entries), so max-pooling priorities never ties."""
    flat = x.flatten(2)
    order = torch.sort(flat, dim=2, descending=True, stable=True).indices
    n = flat.shape[2]
    ranks = torch.empty_like(order).scatter_(2, order, torch.arange(n, device=x.device).expand_as(order))
    return (n - ranks).to(torch.float64).view_as(x)


def peaks(s: torch.Tensor, d: int) -> torch.Tensor:
    """Greedy peak picking with minimum distance ``d`` (see the module docstring), vectorized.

    Each round keeps every undecided candidate whose priority is the highest among undecided
    candidates within distance < d (greedy would keep it: every higher one nearby is already
    suppressed), then suppresses the undecided candidates near a kept peak. Each round keeps at
    least the best undecided candidate, so the loop ends; it takes a few rounds in practice.
    """
    if d < 1:
        raise InspectnetError(f"peaks: minimum distance d={d} must be at least 1")
    x, one_d = _as_2d(s)
    win = (1, 2 * d - 1) if one_d else (2 * d - 1, 2 * d - 1)
    pad = (0, d - 1) if one_d else (d - 1, d - 1)
    nb = (1, 3) if one_d else (3, 3)
    xd = x.detach()
    local_max = xd >= F.max_pool2d(xd, nb, stride=1, padding=(0, 1) if one_d else (1, 1))
    undecided = local_max & (xd > 0)
    kept = torch.zeros_like(undecided)
    prio = _priority(xd)
    while bool(undecided.any()):
        live = torch.where(undecided, prio, torch.zeros_like(prio))
        best_near = F.max_pool2d(live, win, stride=1, padding=pad)
        new = undecided & (live == best_near)
        kept |= new
        near_new = F.max_pool2d(new.to(x.dtype if x.is_floating_point() else torch.float32), win, stride=1,
                                padding=pad) > 0
        undecided &= ~near_new
    out = x * kept
    return out.squeeze(2) if one_d else out


def peaks_reference(s: torch.Tensor, d: int) -> torch.Tensor:
    """Straightforward per-map Python loop of the greedy Peaks definition (slow; for tests)."""
    x, one_d = _as_2d(s.detach())
    out = torch.zeros_like(x)
    B, C, H, W = x.shape
    for b in range(B):
        for c in range(C):
            m = x[b, c]
            cands = []
            for i in range(H):
                for j in range(W):
                    v = float(m[i, j])
                    if v <= 0:
                        continue
                    rows = range(max(0, i - 1), min(H, i + 2)) if not one_d else [i]
                    if all(v >= float(m[r, q]) for r in rows for q in range(max(0, j - 1), min(W, j + 2))):
                        cands.append((-v, i * W + j, i, j))
            chosen: list[tuple[int, int]] = []
            for _v, _f, i, j in sorted(cands):
                if all(max(abs(i - a), abs(j - b2)) >= d for a, b2 in chosen):
                    chosen.append((i, j))
                    out[b, c, i, j] = m[i, j]
    return out.squeeze(2) if one_d else out


def get_activation(name: str, *, k: int = 1, m: int = 2, d: int = 2) -> Callable[[torch.Tensor], torch.Tensor]:
    """φ by name (``identity``, ``max-activations`` with k, ``max-pool-indices`` with m, ``peaks`` with d)."""
    if name == "identity":
        return identity
    if name == "max-activations":
        return lambda s: max_activations(s, k)
    if name == "max-pool-indices":
        return lambda s: max_pool_indices(s, m)
    if name == "peaks":
        return lambda s: peaks(s, d)
    raise InspectnetError(f"unknown sparse activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
