"""Streaming per-unit quantiles: a fixed-bin histogram per unit whose range doubles as data arrives.

Network Dissection thresholds each unit at the top-q quantile of its activations over every pixel
of the dataset; holding all those values is out of the question for real datasets. Each unit keeps
``bins`` counts over ``[lo, lo + bins·width)``. The range is set from the first batch; a later value
outside it doubles the width (adjacent bins merged pairwise, the old range kept as one half of the
new one), so every count stays exact and no second pass for the range is needed. Each bin also
keeps the smallest and largest value it received. The quantile is read from the cumulative counts
with linear interpolation between its bin's smallest and largest value: its error is at most one
bin width, i.e. ``(max - min) / bins`` up to a factor of two from the doublings, and a point mass
(many pixels with the same value, e.g. ReLU zeros) gives exactly that value.

>>> import torch
>>> sketch = UnitQuantiles(units=2, bins=1024)
>>> sketch.update(torch.stack([torch.arange(1000.), -torch.arange(1000.)]))
>>> [round(v) for v in sketch.quantile(0.99).tolist()]
[989, -10]
"""

import torch

from inspectnet.core.errors import InspectnetError


class UnitQuantiles:
    """Per-unit histograms of streamed values (``update(values)`` with ``values`` of shape (K, M))."""

    def __init__(self, units: int, bins: int = 4096, device: torch.device | str = "cpu"):
        if bins < 2 or bins % 2:
            raise InspectnetError(f"quantile sketch bins must be an even number ≥ 2, got {bins}")
        self.units, self.bins = units, bins
        self.counts = torch.zeros(units, bins, dtype=torch.int64, device=device)
        self.bmin = torch.full((units, bins), float("inf"), dtype=torch.float64, device=device)
        self.bmax = torch.full((units, bins), float("-inf"), dtype=torch.float64, device=device)
        self.lo = torch.zeros(units, dtype=torch.float64, device=device)
        self.width = torch.zeros(units, dtype=torch.float64, device=device)
        self.total = 0
        self.min = torch.full((units,), float("inf"), dtype=torch.float64, device=device)
        self.max = torch.full((units,), float("-inf"), dtype=torch.float64, device=device)

    def update(self, values: torch.Tensor) -> None:
        """Add ``values`` (K, M): M new observations of each of the K units (NaN refused)."""
        if values.dim() != 2 or values.shape[0] != self.units:
            raise InspectnetError(f"quantile sketch expects ({self.units}, M) values, got {tuple(values.shape)}")
        if values.shape[1] == 0:
            return
        v = values.detach().to(self.counts.device, torch.float64)
        if torch.isnan(v).any():
            raise InspectnetError("activations contain NaN; cannot compute dissection thresholds")
        vmin, vmax = v.amin(dim=1), v.amax(dim=1)
        self.min, self.max = torch.minimum(self.min, vmin), torch.maximum(self.max, vmax)
        if self.total == 0:
            self._init_range(vmin, vmax)
        self._grow(vmin, vmax)
        idx = ((v - self.lo[:, None]) / self.width[:, None]).floor().clamp_(0, self.bins - 1).long()
        idx += torch.arange(self.units, device=idx.device)[:, None] * self.bins
        flat, vals = idx.reshape(-1), v.reshape(-1)
        self.counts += torch.bincount(flat, minlength=self.units * self.bins).view(self.units, self.bins)
        self.bmin.view(-1).scatter_reduce_(0, flat, vals, "amin")
        self.bmax.view(-1).scatter_reduce_(0, flat, vals, "amax")
        self.total += values.shape[1]

    def _init_range(self, vmin: torch.Tensor, vmax: torch.Tensor) -> None:
        span = vmax - vmin
        # a constant unit gets a tiny positive span around its value; widened later if needed
        span = torch.where(span > 0, span, vmin.abs().clamp(min=1.0) * 1e-6)
        self.lo = vmin.clone()
        self.width = span * (1 + 1e-9) / self.bins

    def _grow(self, vmin: torch.Tensor, vmax: torch.Tensor) -> None:
        for _ in range(2048):
            hi = self.lo + self.width * self.bins
            below, above = vmin < self.lo, vmax >= hi
            grow = below | above
            if not grow.any():
                return
            down = below[grow]  # extend downwards: the old range becomes the upper half
            self.counts[grow] = _merge(self.counts[grow], down, "sum", 0)
            self.bmin[grow] = _merge(self.bmin[grow], down, "amin", float("inf"))
            self.bmax[grow] = _merge(self.bmax[grow], down, "amax", float("-inf"))
            span = self.width[grow] * self.bins
            self.lo[grow] = torch.where(down, self.lo[grow] - span, self.lo[grow])
            self.width[grow] = self.width[grow] * 2
        raise InspectnetError("activation range grew beyond what the quantile sketch can represent (inf?)")

    def quantile(self, q: float) -> torch.Tensor:
        """Per-unit estimate of the ``q`` quantile (float64, shape (K,)), e.g. ``q = 0.995`` for top 0.5 %."""
        if not 0.0 <= q <= 1.0:
            raise InspectnetError(f"quantile must be within [0, 1], got {q}")
        if self.total == 0:
            raise InspectnetError("no values were streamed; cannot compute a quantile")
        cum = self.counts.cumsum(dim=1).to(torch.float64)
        target = q * self.total
        # first bin whose cumulative count reaches the target rank
        b = torch.searchsorted(cum, torch.full((self.units, 1), target, dtype=torch.float64,
                                                device=cum.device)).squeeze(1).clamp(max=self.bins - 1)
        prev = cum.gather(1, (b - 1).clamp(min=0)[:, None]).squeeze(1)
        before = torch.where(b > 0, prev, torch.zeros_like(prev))
        inside = self.counts.gather(1, b[:, None]).squeeze(1).to(torch.float64)
        frac = torch.where(inside > 0, (target - before) / inside.clamp(min=1), torch.zeros_like(inside))
        lo_v = self.bmin.gather(1, b[:, None]).squeeze(1)
        hi_v = self.bmax.gather(1, b[:, None]).squeeze(1)
        est = torch.where(inside > 0, lo_v + (hi_v - lo_v) * frac.clamp(0, 1),
                          self.lo + self.width * b.to(torch.float64))
        # the estimate never leaves the observed range
        return torch.minimum(torch.maximum(est, self.min), self.max)

    def bin_width(self) -> torch.Tensor:
        """Current bin width per unit: the bound on the quantile error."""
        return self.width.clone()



def _merge(rows: torch.Tensor, down: torch.Tensor, how: str, empty: float) -> torch.Tensor:
    """Merge adjacent bin pairs of ``rows`` (n, bins) into one half; the other half becomes ``empty``."""
    n, bins = rows.shape
    pairs = rows.view(n, bins // 2, 2)
    merged = pairs.sum(dim=2) if how == "sum" else pairs.amin(dim=2) if how == "amin" else pairs.amax(dim=2)
    fresh = torch.full_like(rows, empty)
    fresh[down, bins // 2:] = merged[down]
    fresh[~down, :bins // 2] = merged[~down]
    return fresh
