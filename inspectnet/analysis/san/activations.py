"""Sparse activation functions φ of Sparsely Activated Networks (Bizopoulos & Koutsouris).

All act on maps of shape (B, C, L) (1-D signals) or (B, C, H, W) (images / feature maps), one map
per (sample, channel), and return a tensor of the same shape that is zero except at survivors
(which keep their input value, so gradients flow through them):

- ``identity``: everything survives.
- ``max_activations(s, k)``: the k largest entries of each map (ties broken by position); the paper
  sets k = ⌊n/m⌋^dim (:func:`paper_k`) so that it keeps about as many as max-pool indices.
- ``max_pool_indices(s, m)``: one survivor per m×m window, the entry of largest |s|:
  max_pool(|s|) with indices → gather s → max_unpool (not the paper code's one-window bug).
- ``peaks(s, mpd)``: the paper's Algorithm 4. Candidates are the zero crossings of the first
  derivative from + to − (s[t−1] < s[t] > s[t+1]; along both axes for images, so no map border is
  a candidate); taken greedily by amplitude (ties: lower flat index first), each kept peak
  suppresses every other candidate within distance ≤ mpd (Chebyshev for images). Vectorized
  iterative suppression, equal to :func:`peaks_algorithm4`, the line-by-line transcription.

>>> s = torch.tensor([[[0.0, 3, 1, 2, 0, 5, 4]]])
>>> peaks(s, 1).tolist()
[[[0.0, 3.0, 0.0, 2.0, 0.0, 5.0, 0.0]]]
>>> peaks(s, 2).tolist()
[[[0.0, 3.0, 0.0, 0.0, 0.0, 5.0, 0.0]]]
"""

import itertools
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
    """φ that keeps every entry (the dense baseline).

    Args:
        s: the maps.

    Returns:
        ``s`` itself.
    """
    return s


def paper_k(shape: tuple[int, ...], m: int) -> int:
    """Max-Activations' k in the paper: ⌊n/m⌋^dim for maps of side n, at least 1.

    That is Π ⌊n_i/m⌋ over the spatial sides of ``shape`` (the trailing 1 or 2 dimensions of a
    (B, C, L) or (B, C, H, W) map).

    Args:
        shape: the maps' shape.
        m: the kernel size.

    Returns:
        k.

    Raises:
        InspectnetError: ``m`` is below 1, or the shape is neither (B, C, L) nor (B, C, H, W).

    Examples:
        >>> paper_k((64, 2, 28, 28), 3), paper_k((8, 1, 100), 7)
        (81, 14)
    """
    if m < 1:
        raise InspectnetError(f"max-activations: kernel size m={m} must be at least 1")
    sides = shape[2:]
    if len(sides) not in (1, 2):
        raise InspectnetError(f"sparse activations take (B, C, L) or (B, C, H, W) maps, got shape {tuple(shape)}")
    k = 1
    for n in sides:
        k *= n // m
    return max(1, k)


def max_activations(s: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest entries of each map.

    Args:
        s: (B, C, ...) maps.
        k: entries kept per map.

    Returns:
        The maps with every other entry zero.

    Raises:
        InspectnetError: ``k`` is below 1.

    Examples:
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

    Args:
        s: (B, C, L) or (B, C, H, W) maps.
        m: the window.

    Returns:
        The maps with every other entry zero.

    Raises:
        InspectnetError: ``m`` is below 1.

    Examples:
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
    """Unique rank of each entry within its map: higher value first, then lower flat index.

    As float64, exact for maps of up to 2^53 entries, so max-pooling priorities never tie.
    """
    flat = x.flatten(2)
    order = torch.sort(flat, dim=2, descending=True, stable=True).indices
    n = flat.shape[2]
    ranks = torch.empty_like(order).scatter_(2, order, torch.arange(n, device=x.device).expand_as(order))
    return (n - ranks).to(torch.float64).view_as(x)


def _rises_then_falls(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x[t−1] < x[t] > x[t+1] along ``dim``; the first and last entry have no two-sided derivative."""
    n = x.shape[dim]
    z = torch.zeros_like(x, dtype=torch.bool)
    if n > 2:
        ds = x.diff(dim=dim)
        z.narrow(dim, 1, n - 2).copy_((ds.narrow(dim, 0, n - 2) > 0) & (ds.narrow(dim, 1, n - 2) < 0))
    return z


def peaks(s: torch.Tensor, mpd: int) -> torch.Tensor:
    """Peak detection with minimum peak distance ``mpd`` (Algorithm 4), vectorized over maps.

    Each round keeps every undecided candidate whose priority is the highest among undecided
    candidates within distance ≤ mpd (the greedy pass would keep it: every higher one nearby is
    already suppressed), then suppresses the undecided candidates within mpd of a kept peak. Each
    round keeps at least the best undecided candidate, so the loop ends; it takes a few rounds.

    Args:
        s: (B, C, L) or (B, C, H, W) maps.
        mpd: the minimum peak distance.

    Returns:
        The maps with only their peaks non-zero.

    Raises:
        InspectnetError: ``mpd`` is below 1.

    Examples:
        >>> s = torch.tensor([[[0.0, 3, 0, 4, 0]]])
        >>> peaks(s, 1).tolist(), peaks(s, 2).tolist()   # the lower peak lies within distance 2 of the higher
        ([[[0.0, 3.0, 0.0, 4.0, 0.0]]], [[[0.0, 0.0, 0.0, 4.0, 0.0]]])
    """
    if mpd < 1:
        raise InspectnetError(f"peaks: minimum peak distance mpd={mpd} must be at least 1")
    x, one_d = _as_2d(s)
    win = (1, 2 * mpd + 1) if one_d else (2 * mpd + 1, 2 * mpd + 1)
    pad = (0, mpd) if one_d else (mpd, mpd)
    xd = x.detach()
    undecided = _rises_then_falls(xd, 3) if one_d else _rises_then_falls(xd, 3) & _rises_then_falls(xd, 2)
    kept = torch.zeros_like(undecided)
    prio = _priority(xd)
    while bool(undecided.any()):
        live = torch.where(undecided, prio, torch.zeros_like(prio))
        new = undecided & (live == F.max_pool2d(live, win, stride=1, padding=pad))
        kept |= new
        undecided &= ~(F.max_pool2d(new.to(torch.float32), win, stride=1, padding=pad) > 0)
    out = x * kept
    return out.squeeze(2) if one_d else out


def peaks_algorithm4(s: torch.Tensor, mpd: int) -> torch.Tensor:
    """The paper's Algorithm 4 transcribed line by line, one map at a time (slow; the test reference).

    A position is a tuple of coordinates (t) for signals or (row, column) for images; lines 1 and
    8–10 apply to every coordinate, which for a signal is the algorithm as printed.

    Args:
        s: (B, C, L) or (B, C, H, W) maps.
        mpd: the minimum peak distance.

    Returns:
        The maps with only their peaks non-zero.
    """
    x, one_d = _as_2d(s.detach())
    out = torch.zeros_like(x)
    B, C, H, W = x.shape
    for b in range(B):
        for c in range(C):
            m = x[b, c, 0] if one_d else x[b, c]
            out[b, c] = _algorithm4(m, mpd).view_as(out[b, c])
    return out.squeeze(2) if one_d else out


def _algorithm4(s: torch.Tensor, mpd: int) -> torch.Tensor:
    """Algorithm 4 on one map ``s`` of 1 or 2 dimensions."""
    # 1: z ← ds/dt > 0 ∧ ds/dt < 0: the derivative is positive before t and negative after it
    z = torch.zeros_like(s, dtype=torch.bool)
    for pos in itertools.product(*(range(n) for n in s.shape)):
        z[pos] = True
        for axis, t in enumerate(pos):
            if not 0 < t < s.shape[axis] - 1:  # no derivative on one side: not a zero crossing
                z[pos] = False
                continue
            before, after = list(pos), list(pos)
            before[axis], after[axis] = t - 1, t + 1
            z[pos] &= bool(s[pos] - s[tuple(before)] > 0) and bool(s[tuple(after)] - s[pos] < 0)
    # 2: p_i ← z > 0 (positions of the candidates, row-major)
    p_i = z.nonzero()
    # 3: p_ii ← sort(z), by amplitude, descending (stable: equal amplitudes keep row-major order)
    p_ii = torch.sort(s[tuple(p_i.T)], descending=True, stable=True).indices
    # 4: p_isorted ← p_i(p_ii)
    p_isorted = p_i[p_ii]
    # 5: q_i ← 0
    q = torch.zeros(len(p_isorted), dtype=torch.bool)
    # 6: for i = 0 to |p|
    for i in range(len(p_isorted)):
        # 7: if ¬q_i
        if not q[i]:
            # 8: p_ir ← p_i ≥ p_ii − mpd
            p_ir = (p_isorted >= p_isorted[i] - mpd).all(dim=1)
            # 9: p_il ← p_i ≤ p_ii + mpd
            p_il = (p_isorted <= p_isorted[i] + mpd).all(dim=1)
            # 10: p_im ← p_ir ∧ p_il
            p_im = p_ir & p_il
            # 11: q ← q ∨ p_im
            q = q | p_im
            # 12: q_i ← 0
            q[i] = False
    # 15: u_ind ← p_isorted(¬q)
    u_ind = p_isorted[~q]
    # 16: u_i ← 0
    u = torch.zeros_like(s)
    # 17: u(u_ind) ← s(u_ind)
    u[tuple(u_ind.T)] = s[tuple(u_ind.T)]
    return u


def get_activation(name: str, *, k: int = 0, m: int = 2, d: int = 2) -> Callable[[torch.Tensor], torch.Tensor]:
    """φ by name.

    ``identity``, ``max-activations`` (keeps ``k``; k = 0 is the paper's ⌊n/m⌋^dim of each map's size),
    ``max-pool-indices`` (window ``m``), ``peaks`` (minimum peak distance ``d``).

    Args:
        name: one of :data:`ACTIVATIONS`.
        k: max-activations' k (0: the paper's).
        m: the window (or kernel size for the paper's k).
        d: the peaks' minimum distance.

    Returns:
        The function maps -> sparse maps.

    Raises:
        InspectnetError: ``name`` is unknown.

    Examples:
        >>> get_activation("max-activations", k=1)(torch.tensor([[[1.0, 5, 3]]])).tolist()
        [[[0.0, 5.0, 0.0]]]
    """
    if name == "identity":
        return identity
    if name == "max-activations":
        return lambda s: max_activations(s, k or paper_k(tuple(s.shape), m))
    if name == "max-pool-indices":
        return lambda s: max_pool_indices(s, m)
    if name == "peaks":
        return lambda s: peaks(s, d)
    raise InspectnetError(f"unknown sparse activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
