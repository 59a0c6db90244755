"""Streaming per-unit quantiles: a fixed-bin histogram per unit on a power-of-two grid that coarsens as data arrives.

Network Dissection thresholds each unit at the top-q quantile of its activations over every pixel
of the dataset; holding all those values is out of the question for real datasets. Each unit keeps
``bins`` counts over ``[s·2^e, (s + bins)·2^e)``: bin ``i`` holds the values ``v`` with
``floor(v / 2^e) = s + i``. The grid (``e``, ``s``) is a function of the smallest and largest value
seen so far only: ``e`` is the smallest exponent whose window fits both (and not below the values'
magnitude · 2^-40, nor below -1023). When a batch widens the range, ``e`` grows and every old bin falls inside
exactly one new bin (power-of-two grids nest), so counts stay exact and no second pass for the
range is needed. Because the final grid depends only on the overall minimum and maximum, the
histogram does not depend on the order or the grouping of the data: sketches of the parts of a
dataset (e.g. one per ``torchrun`` rank) re-binned to the common grid and summed
(:meth:`UnitQuantiles.all_reduce`) equal, bit for bit, the sketch of the whole.

Each bin also keeps the smallest and largest value it received. The quantile is read from the
cumulative counts with linear interpolation between its bin's smallest and largest value: its error
is at most one bin width, ``2^e`` ≤ 2·(max − min)/(bins − 1), and a point mass (many pixels with the
same value, e.g. ReLU zeros) gives exactly that value.

>>> import torch
>>> sketch = UnitQuantiles(units=2, bins=1024)
>>> sketch.update(torch.stack([torch.arange(1000.), -torch.arange(1000.)]))
>>> [round(v) for v in sketch.quantile(0.99).tolist()]
[989, -10]
"""

import torch

from inspectnet.core.distributed import all_reduce
from inspectnet.core.errors import InspectnetError

# bins are never narrower than a value's magnitude · 2^-40, so v / 2^e stays an exact integer in float64
_RELATIVE_FLOOR = 40
# nor narrower than 2^-1023: torch.ldexp(v, -e) multiplies by 2^-e, which overflows float64 from 2^1024 on
_LEAST_EXP = -1023


class UnitQuantiles:
    """Per-unit histograms of streamed values (``update(values)`` with ``values`` of shape (K, M)).

    Args:
        units: K.
        bins: bins per unit.
        device: where the histograms live.

    Raises:
        InspectnetError: ``bins`` is below 2.

    Examples:
        >>> q = UnitQuantiles(1, bins=64); q.update(torch.arange(101.)[None])
        >>> abs(float(q.quantile(0.5)[0]) - 50) <= float(q.bin_width()[0])
        True
    """

    def __init__(self, units: int, bins: int = 4096, device: torch.device | str = "cpu"):
        if bins < 2:
            raise InspectnetError(f"quantile sketch bins must be at least 2, got {bins}")
        self.units, self.bins = units, bins
        self.counts = torch.zeros(units, bins, dtype=torch.int64, device=device)
        self.bmin = torch.full((units, bins), float("inf"), dtype=torch.float64, device=device)
        self.bmax = torch.full((units, bins), float("-inf"), dtype=torch.float64, device=device)
        self.exp = torch.zeros(units, dtype=torch.int64, device=device)    # bin width 2^exp
        self.start = torch.zeros(units, dtype=torch.int64, device=device)  # first bin = [start·2^exp, ...)
        self.total = 0
        self.min = torch.full((units,), float("inf"), dtype=torch.float64, device=device)
        self.max = torch.full((units,), float("-inf"), dtype=torch.float64, device=device)

    def update(self, values: torch.Tensor) -> None:
        """Add ``values`` (K, M): M new observations of each of the K units (NaN refused).

        Args:
            values: the observations.

        Raises:
            InspectnetError: the shape is not (K, M), or a value is NaN or infinite.
        """
        if values.dim() != 2 or values.shape[0] != self.units:
            raise InspectnetError(f"quantile sketch expects ({self.units}, M) values, got {tuple(values.shape)}")
        if values.shape[1] == 0:
            return
        v = values.detach().to(self.counts.device, torch.float64)
        if torch.isnan(v).any():
            raise InspectnetError("activations contain NaN; cannot compute dissection thresholds")
        if torch.isinf(v).any():
            raise InspectnetError("activations contain inf; cannot compute dissection thresholds")
        self._regrid(torch.minimum(self.min, v.amin(dim=1)), torch.maximum(self.max, v.amax(dim=1)))
        idx = self._cell(v) - self.start[:, None]
        idx += torch.arange(self.units, device=idx.device)[:, None] * self.bins
        flat, vals = idx.reshape(-1), v.reshape(-1)
        self._add(flat, torch.ones_like(flat), vals, vals)
        self.total += values.shape[1]

    def all_reduce(self) -> None:
        """Merge the sketches of every ``torchrun`` rank into each (no-op in one process).

        Every rank re-bins to the grid of the overall range, then counts are summed and bin
        extremes reduced: the result equals one sketch fed all the data.
        """
        lo, hi = all_reduce(self.min.clone(), "min"), all_reduce(self.max.clone(), "max")
        self._regrid(lo, hi)
        for t, op in ((self.counts, "sum"), (self.bmin, "min"), (self.bmax, "max")):
            all_reduce(t, op)
        total = all_reduce(torch.tensor([self.total], dtype=torch.int64), "sum")
        self.total = int(total.item())

    def _cell(self, v: torch.Tensor) -> torch.Tensor:
        """Index of the width-2^exp grid cell holding each value: floor(v / 2^exp), exact."""
        return torch.floor(torch.ldexp(v, -self.exp[:, None].to(v.dtype))).long()

    def _regrid(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Move to the grid of the range [lo, hi] (per unit), folding the current bins into it."""
        exp, start = self._grid(lo, hi)
        moved = (exp != self.exp) | (start != self.start)
        self.min, self.max = torch.minimum(self.min, lo), torch.maximum(self.max, hi)
        if not moved.any():
            return
        counts, bmin, bmax = self.counts.clone(), self.bmin.clone(), self.bmax.clone()
        old = self.start[:, None] + torch.arange(self.bins, device=counts.device)[None, :]
        shift = (exp - self.exp)[:, None]
        new = (old >> shift) - start[:, None]  # an arithmetic shift floors: the nested coarser cell
        keep = moved[:, None] & (counts > 0)
        self.counts[moved] = 0
        self.bmin[moved] = float("inf")
        self.bmax[moved] = float("-inf")
        self.exp, self.start = exp, start
        flat = (new + torch.arange(self.units, device=new.device)[:, None] * self.bins)[keep]
        self._add(flat, counts[keep], bmin[keep], bmax[keep])

    def _grid(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(exp, start) of the smallest power-of-two window of ``bins`` cells holding [lo, hi]."""
        seen = torch.isfinite(lo)
        lo, hi = torch.where(seen, lo, 0.0), torch.where(seen, hi, 0.0)
        scale = torch.maximum(lo.abs(), hi.abs())
        floor_exp = (torch.frexp(scale).exponent.long() - _RELATIVE_FLOOR).clamp(min=_LEAST_EXP)
        _, span_exp = torch.frexp((hi - lo) / (self.bins - 1))
        exp = torch.where(hi > lo, torch.maximum(floor_exp, span_exp.long() - 1), floor_exp)
        for _ in range(4):  # exp may be one doubling short; exp + 1 always fits unless hi − lo overflows float64
            start = torch.floor(torch.ldexp(lo, -exp.to(lo.dtype))).long()
            last = torch.floor(torch.ldexp(hi, -exp.to(hi.dtype))).long()
            short = last - start >= self.bins
            if not short.any():
                return exp, start
            exp = exp + short.long()
        raise InspectnetError("activation range cannot be represented by the quantile sketch")

    def _add(self, flat: torch.Tensor, counts: torch.Tensor, vmin: torch.Tensor, vmax: torch.Tensor) -> None:
        """Add ``counts`` and fold the extremes ``vmin``/``vmax`` into the bins at flat indices ``flat``."""
        self.counts.view(-1).index_add_(0, flat, counts)
        self.bmin.view(-1).scatter_reduce_(0, flat, vmin, "amin")
        self.bmax.view(-1).scatter_reduce_(0, flat, vmax, "amax")

    def quantile(self, q: float) -> torch.Tensor:
        """Per-unit estimate of the ``q`` quantile, e.g. ``q = 0.995`` for the top 0.5 %.

        Args:
            q: the quantile, in [0, 1].

        Returns:
            The (K,) float64 estimates, each within one bin width of the exact quantile.

        Raises:
            InspectnetError: ``q`` is outside [0, 1], or nothing was streamed.
        """
        if not 0.0 <= q <= 1.0:
            raise InspectnetError(f"quantile must be within [0, 1], got {q}")
        if self.total == 0:
            raise InspectnetError("no values were streamed; cannot compute a quantile")
        cum = self.counts.cumsum(dim=1).to(torch.float64)
        target = q * self.total
        # first bin whose cumulative count reaches the target rank; q ≤ 1 keeps it within the last bin (cum = total)
        b = torch.searchsorted(cum, torch.full((self.units, 1), target, dtype=torch.float64, device=cum.device)).squeeze(1)
        prev = cum.gather(1, (b - 1).clamp(min=0)[:, None]).squeeze(1)
        before = torch.where(b > 0, prev, torch.zeros_like(prev))
        # bin b is never empty (bin 0 holds the minimum, a later b has before < target ≤ cum[b]), so the rank's
        # fraction of it, (target − before) / inside, lies in [0, 1]
        inside = self.counts.gather(1, b[:, None]).squeeze(1).to(torch.float64)
        lo_v = self.bmin.gather(1, b[:, None]).squeeze(1)
        hi_v = self.bmax.gather(1, b[:, None]).squeeze(1)
        est = lo_v + (hi_v - lo_v) * ((target - before) / inside)
        # the estimate never leaves the observed range
        return torch.minimum(torch.maximum(est, self.min), self.max)

    def bin_width(self) -> torch.Tensor:
        """Current bin width per unit: the bound on the quantile error.

        Returns:
            The (K,) float64 widths.
        """
        return torch.ldexp(torch.ones(self.units, dtype=torch.float64, device=self.exp.device),
                           self.exp.to(torch.float64))
