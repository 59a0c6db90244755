"""Streaming per-unit tail histograms on a dyadic grid, for the dissection threshold and overlaps.

One pass gives each unit's dissection threshold and, on the same bins, its upsampled area and
concept overlaps above that threshold.

Network Dissection thresholds unit k at T_k, the top-q quantile of its activations over all N pixels
of the dataset, and counts |S_k| and |S_k ∩ L_c| for S_k = {upsampled pixels > T_k}. N is known
before the pass, and only the top of each distribution matters:

* **Floor.** Once more than N − (1−q)·N values ≥ F have been seen, T_k ≥ F whatever comes later, so
  a value below the unit's current floor can never count; it is dropped. The floor rises as data
  arrives (at the first batch, to that batch's top q·N values), so only about q·(1 + ln batches) of
  the pixels are ever binned.
* **Grid.** Unit k's ``bins`` bins are ``[lo + j·2^e, lo + (j+1)·2^e)`` with ``lo`` a multiple of
  ``group·2^e``: a dyadic grid. A value beyond the top doubles the width; bins then merge in pairs
  and never straddle, so every count stays exact. Concept counts use bins of ``group`` fine bins on
  the same grid (their memory is units × concepts × bins/group).
* **Counts.** Raw values ≥ floor: count, min and max per bin (the quantile is interpolated between
  its bin's min and max, so a point mass such as ReLU zeros gives exactly its value). Upsampled
  values > floor: count per bin, and per concept bin the pixels inside each concept's mask, both kept
  apart for pixels of flat cells (see :mod:`~inspectnet.analysis.dissect.upsample`: their values are
  raw activations, often many equal ones, e.g. a constant background). After the pass, |S_k| and
  |S_k ∩ L_c| are the counts above T_k's bin plus the part of that bin above T_k: for flat pixels
  the part of the raw values in it above T_k (none when T_k sits on a point mass, as the exact
  count has it), for the others the part of the bin's width; in a concept bin, the same share as
  the fine counts of its kind. The error is at most one bin, a concept bin for overlaps.

Every count is a sum: sketches of shards are brought onto one grid (:meth:`TailSketch.regrid`) and
added (:meth:`TailSketch.all_reduce` under ``torch.distributed``; give each shard the global N).

>>> import torch
>>> s = TailSketch(units=2, total=2000, quantile=0.01, bins=1024)
>>> s.update(torch.stack([torch.arange(1000.), -torch.arange(1000.)]))
>>> s.update(torch.stack([torch.arange(1000.), -torch.arange(1000.)]))
>>> [round(v) for v in s.threshold().tolist()]
[989, -10]
"""

import math

import torch

from inspectnet.core.errors import InspectnetError

# fine bins per concept bin
CONCEPT_GROUP = 16


class TailSketch:
    """One layer's streaming dissection counts for ``units`` units over ``total`` raw values per unit.

    ``update(values)`` adds raw activations (K, M); with ``concepts`` > 0, ``add_upsampled`` adds
    upsampled pixels above :attr:`gate` and their concept memberships. ``threshold()`` and
    ``overlaps(t)`` read the result once all ``total`` values have been added.

    Args:
        units: K.
        total: raw values per unit over the whole pass (every shard together).
        quantile: the top fraction kept.
        concepts: C (0: thresholds only).
        upsampled_total: upsampled pixels per unit over the whole pass.
        bins: fine bins per unit, a multiple of ``group``.
        group: fine bins per concept bin.
        device: where the counts live.

    Raises:
        InspectnetError: ``bins`` is not a multiple of ``group`` of at least ``2 * group``, or ``quantile``
            is outside (0, 1), or ``total`` is below 1.
    """

    def __init__(self, units: int, total: int, quantile: float, *, concepts: int = 0, upsampled_total: int = 0,
                 bins: int = 4096, group: int = CONCEPT_GROUP, device: torch.device | str = "cpu"):
        if bins < 2 * group or bins % group or group & (group - 1):
            raise InspectnetError(f"dissection bins must be a multiple of {group} and ≥ {2 * group}, got {bins}")
        if not 0 < quantile < 1:
            raise InspectnetError(f"quantile must be within (0, 1), got {quantile}")
        if total < 1:
            raise InspectnetError(f"a tail sketch needs at least one value per unit, got total={total}")
        self.units, self.total, self.bins, self.group = units, int(total), bins, group
        self.target = (1.0 - quantile) * self.total          # rank of the threshold from the bottom
        self.seen = 0
        dev = torch.device(device)
        f64 = {"dtype": torch.float64, "device": dev}
        # before the first update: a grid that any other grid covers (see regrid)
        self._set_grid(torch.full((units,), math.inf, **f64), torch.full((units,), -(2 ** 20), dtype=torch.long,
                                                                          device=dev))
        self.floor = torch.full((units,), -math.inf, **f64)
        self.vmin = torch.full((units,), math.inf, **f64)
        self.vmax = torch.full((units,), -math.inf, **f64)
        self.raw = _Bins(units, bins, _count_dtype(self.total), dev)
        self.raw_groups = torch.zeros(units, bins // group, dtype=self.raw.counts.dtype, device=dev)  # for floors
        up_dtype = _count_dtype(upsampled_total)
        # upsampled pixels per fine bin and per concept bin; the last-but-one axis: 0 = other, 1 = flat cell
        self.up = torch.zeros(units, bins, 2, dtype=up_dtype, device=dev) if concepts else None
        self.inside = torch.zeros(units, bins // group, 2, concepts, dtype=up_dtype, device=dev) if concepts else None

    def _set_grid(self, lo: torch.Tensor, exp: torch.Tensor) -> None:
        self.lo, self.exp = lo, exp
        self.width = torch.ldexp(torch.ones_like(lo), exp)       # fine bin width: the threshold's error bound
        # bin = floor(value · 2^-exp − lo · 2^-exp): both terms exact in float64 (lo is a multiple of the width)
        self._scale = torch.ldexp(torch.ones_like(lo), -exp)
        self._shift = -lo * self._scale

    @property
    def gate(self) -> torch.Tensor:
        """The floor rounded down to float32: ``values > gate`` keeps every float32 value above the floor."""
        return _down_to_float32(self.floor)

    # ------------------------------------------------------------------ accumulate
    def update(self, values: torch.Tensor) -> None:
        """Add ``values`` (K, M): M new raw activations of each of the K units (NaN and inf refused).

        Args:
            values: the activations.

        Raises:
            InspectnetError: the shape is not (K, M), a value is NaN or infinite, or more values came than ``total``.
        """
        if values.dim() != 2 or values.shape[0] != self.units:
            raise InspectnetError(f"tail sketch expects ({self.units}, M) values, got {tuple(values.shape)}")
        if values.shape[1] == 0:
            return
        values = values.float()
        low, high = values.amin(dim=1).double(), values.amax(dim=1).double()
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):       # NaN propagates to both
            raise InspectnetError("activations contain NaN or inf; cannot compute dissection thresholds")
        self.seen += values.shape[1]
        if self.seen > self.total:
            raise InspectnetError(f"tail sketch was told of {self.total} values per unit but got {self.seen}")
        self.vmin, self.vmax = torch.minimum(self.vmin, low), torch.maximum(self.vmax, high)
        if math.isinf(self.lo[0].item()):
            self.floor = self._first_floor(values)
            self._set_grid(*self._covering(self.floor, self.vmax, _start_exp(self.floor, self.vmax, self.bins)))
        elif (self.vmax >= self.lo + self.width * self.bins).any():
            self._regrid_to(*self._covering(self.lo, self.vmax, self.exp))
        index = (values >= self.gate[:, None]).reshape(-1).nonzero().squeeze(1)
        unit, kept = index // values.shape[1], values.reshape(-1).index_select(0, index)
        bins = self._bin(unit, kept)
        self.raw.add(unit, bins, kept)
        self.raw_groups.view(-1).index_add_(0, unit * (self.bins // self.group) + bins // self.group,
                                            torch.ones_like(unit, dtype=self.raw_groups.dtype))
        self._raise_floor()

    def add_upsampled(self, units: torch.Tensor, values: torch.Tensor, flat: torch.Tensor, rows: torch.Tensor,
                      concept_table: torch.Tensor, has_concept: torch.Tensor) -> None:
        """Add upsampled pixels above :attr:`gate` and their concept memberships.

        Args:
            units: (n,) the pixels' units.
            values: (n,) their upsampled values.
            flat: (n,) whether each lies in a flat cell.
            rows: (n,) their rows in ``concept_table``.
            concept_table: (pixels, concepts) 0/1 concept memberships of the batch's pixels.
            has_concept: (pixels,) the pixels inside any concept.

        Raises:
            InspectnetError: the sketch was made without concepts.
        """
        if self.up is None:
            raise InspectnetError("this tail sketch was made without concepts; it keeps no upsampled counts")
        slot = (units * self.bins + self._bin(units, values)) * 2 + flat       # (unit, fine bin, kind)
        self.up.view(-1).index_add_(0, slot, torch.ones_like(slot, dtype=self.up.dtype))
        inside = has_concept.index_select(0, rows)
        slot, rows = slot[inside], rows[inside]
        # (unit, concept bin, kind): bins is a multiple of group, a power of two
        coarse = ((slot >> (self.group.bit_length() - 1) + 1) << 1) | (slot & 1)
        self.inside.view(-1, self.inside.shape[-1]).index_add_(0, coarse, concept_table.index_select(0, rows))

    def _first_floor(self, values: torch.Tensor) -> torch.Tensor:
        """The first batch's floor: its ``need``-th largest value (all of it if it holds fewer values)."""
        need = math.floor(self.total - self.target) + 1
        m = values.shape[1]
        if m < need:
            return values.amin(dim=1).double()
        return values.kthvalue(m - need + 1, dim=1).values.double()

    def _regroup(self, units: torch.Tensor) -> None:
        counts = self.raw.counts[units]
        self.raw_groups[units] = counts.view(len(units), -1, self.group).sum(dim=2, dtype=counts.dtype)

    def _raise_floor(self) -> None:
        self.floor = torch.maximum(self.floor, self.lo + self.width * self._rank_bin())

    def _rank_bin(self) -> torch.Tensor:
        """Per unit, the fine bin holding the value of rank ``target`` from the bottom.

        Everything below the grid (dropped under the floor) counts as below it: the first bin b where that
        many values lie in bins ≤ b, i.e. ``total − counted + cumsum[b] ≥ target``; searched group by group,
        then in its group.
        """
        cum_groups = self.raw_groups.cumsum(dim=1)
        # need ≤ counted, as target ≤ total: both searches land inside
        need = torch.ceil(self.target - self.total + cum_groups[:, -1:].double()).to(cum_groups.dtype)
        g = torch.searchsorted(cum_groups, need)
        before = torch.where(g > 0, cum_groups.gather(1, (g - 1).clamp(min=0)), torch.zeros_like(g))
        fine = g * self.group + torch.arange(self.group, device=g.device)
        cum = before + self.raw.counts.gather(1, fine).cumsum(dim=1)
        return fine.gather(1, torch.searchsorted(cum, need)).squeeze(1)

    def _bin(self, units: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        j = torch.addcmul(self._shift.index_select(0, units), values.double(), self._scale.index_select(0, units))
        return j.floor_().clamp_(0, self.bins - 1).long()

    # ------------------------------------------------------------------ grid
    def _covering(self, lo: torch.Tensor, vmax: torch.Tensor, exp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The finest dyadic grid with width ≥ 2^exp whose range starts at or below ``lo`` and exceeds ``vmax``.

        A grid that already covers ``vmax`` is kept: merging or reducing sketches never costs resolution.
        """
        # no grid of width w < (vmax − lo) / bins covers; one of twice that width always does, as its start lies
        # less than group bins below lo and 2·(bins − group) ≥ bins; a third try absorbs a rounding of log2
        least = torch.ceil(torch.log2(((vmax - lo) / self.bins).clamp(min=2.0 ** -1000)))
        exp = torch.maximum(exp, least.long())
        for _ in range(3):
            width = torch.ldexp(torch.ones_like(lo), exp)
            start = torch.floor(lo / (width * self.group)) * (width * self.group)
            short = start + width * self.bins <= vmax
            if not short.any():
                return start, exp
            exp = exp + short.long()
        raise InspectnetError("activation range grew beyond what the tail sketch can represent")

    def regrid(self, lo: torch.Tensor, vmax: torch.Tensor, exp: torch.Tensor) -> None:
        """Move onto the common grid of sketches whose smallest ``lo``, largest ``vmax`` and largest ``exp`` are given.

        Every sketch given the same three (per unit) gets the same bins.

        Args:
            lo: (K,) the smallest grid start.
            vmax: (K,) the largest value seen.
            exp: (K,) the largest width exponent.
        """
        if torch.isinf(lo).all():                          # no sketch holds any value yet
            return
        self._regrid_to(*self._covering(lo, vmax, exp))

    def _regrid_to(self, lo: torch.Tensor, exp: torch.Tensor) -> None:
        moved = (lo != self.lo) | (exp != self.exp)
        if not moved.any():
            return
        if math.isinf(self.lo[0].item()):                  # nothing counted yet
            self._set_grid(lo, exp)
            return
        shift = exp - self.exp
        if (shift < 0).any() or (lo > self.lo).any():
            raise InspectnetError("a tail sketch can only move onto a coarser grid that covers its own")
        units = moved.nonzero().squeeze(1)             # usually a few units whose range grew
        offset = ((self.lo[units] - lo[units]) / self.width[units]).round().long()   # old fine bins, × group
        j = torch.arange(self.bins, device=lo.device)
        fine = ((offset[:, None] + j) >> shift[units, None]).clamp(max=self.bins - 1)
        self.raw.regrid(units, fine)
        self._regroup(units)
        if self.up is not None:
            self.up[units] = _moved(self.up[units], fine)
            jc = torch.arange(self.bins // self.group, device=lo.device)
            coarse = ((offset[:, None] // self.group + jc) >> shift[units, None]).clamp(max=jc.numel() - 1)
            self.inside[units] = _moved(self.inside[units], coarse)
        self._set_grid(lo, exp)

    # ------------------------------------------------------------------ shards
    def reducible(self) -> list[tuple[torch.Tensor, str]]:
        """Every count with how shards combine it, once all shards share one grid.

        Returns:
            ``(tensor, "sum" | "min" | "max")`` pairs.
        """
        out = [(self.vmin, "min"), (self.vmax, "max"), *self.raw.reducible()]
        if self.up is not None:
            out += [(self.up, "sum"), (self.inside, "sum")]
        return out

    def all_reduce(self, group=None) -> None:
        """Combine this sketch with the same layer's sketches on every rank of the process ``group``.

        Afterwards each rank holds the counts of the whole dataset (``torch.distributed``).

        Args:
            group: the process group (None: the default group).
        """
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        lo, vmax, exp = self.lo.clone(), self.vmax.clone(), self.exp.clone()
        for t, op in ((lo, "min"), (vmax, "max"), (exp, "max")):
            dist.all_reduce(t, ops[op], group=group)
        self.regrid(lo, vmax, exp)
        for t, op in self.reducible():
            dist.all_reduce(t, ops[op], group=group)
        seen = torch.tensor([self.seen], dtype=torch.long, device=self.lo.device)
        dist.all_reduce(seen, ops["sum"], group=group)
        self.seen = int(seen.item())
        self._regroup(torch.arange(self.units, device=self.lo.device))

    def merge(self, other: "TailSketch") -> None:
        """Add ``other`` (the same units over another shard, made with the same ``total``) to this sketch.

        Args:
            other: the sketch to add.
        """
        lo, vmax = torch.minimum(self.lo, other.lo), torch.maximum(self.vmax, other.vmax)
        exp = torch.maximum(self.exp, other.exp)
        self.regrid(lo, vmax, exp)
        other.regrid(lo, vmax, exp)
        for (mine, op), (theirs, _) in zip(self.reducible(), other.reducible()):
            mine.copy_(mine + theirs if op == "sum" else torch.minimum(mine, theirs) if op == "min"
                       else torch.maximum(mine, theirs))
        self.seen += other.seen
        self._regroup(torch.arange(self.units, device=self.lo.device))

    # ------------------------------------------------------------------ finalize
    def threshold(self) -> torch.Tensor:
        """Per-unit top-``quantile`` level, within one fine bin of the exact quantile.

        Returns:
            The (K,) float64 thresholds.

        Raises:
            InspectnetError: fewer values were added than ``total``.
        """
        if self.seen != self.total:
            raise InspectnetError(f"tail sketch holds {self.seen} of the {self.total} values per unit it was "
                                  f"told of; its floors and threshold would be wrong")
        counts = self.raw.counts
        b = self._rank_bin()[:, None]
        inside = counts.gather(1, b).squeeze(1).double()
        # values below bin b: the ones dropped under the floor and the counted ones in lower bins
        before = self.total - counts.sum(dim=1).double() + counts.cumsum(dim=1).gather(1, b).squeeze(1) - inside
        # every value at or above the rank's is counted, so b holds that value: inside ≥ 1 and
        # before < target ≤ before + inside, a share in (0, 1]
        share = (self.target - before) / inside
        lo_v = self.raw.low.gather(1, b).squeeze(1).double()
        hi_v = self.raw.high.gather(1, b).squeeze(1).double()
        est = lo_v + (hi_v - lo_v) * share
        return torch.minimum(torch.maximum(est, self.vmin), self.vmax)           # against rounding past the range

    def overlaps(self, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """|S_k ∩ L_c| and |S_k| for S_k = upsampled pixels > ``thresholds[k]``.

        Args:
            thresholds: (K,) thresholds (those of :meth:`threshold`).

        Returns:
            ``(intersections (K, C), areas (K,))`` as float64.

        Raises:
            InspectnetError: the sketch was made without concepts.
        """
        if self.up is None:
            raise InspectnetError("this tail sketch was made without concepts; it keeps no upsampled counts")
        t = thresholds.to(self.lo.device, torch.float64)
        b = self._bin(torch.arange(self.units, device=t.device), t)
        share = torch.stack([self._share_of_width(b, t), self._share_of_raw(b, t)], dim=1)   # (K, 2)
        cum = self.up.cumsum(dim=1)                                            # (K, bins, 2), int64
        total = cum[:, -1]

        def above(bins: torch.Tensor) -> torch.Tensor:                        # upsampled values in bins > b
            return (total - _at(cum, bins.clamp(min=0)) * (bins >= 0)[:, None]).double()

        own = _at(self.up, b).double()
        higher = above(b)
        area = (higher + share * own).sum(dim=1)
        # in the concept bin holding t, each kind's fine share above t applies to its concept counts
        first = b // self.group * self.group
        beyond_group = above(first + self.group - 1)
        in_group = above(first - 1) - beyond_group
        above_in_group = higher - beyond_group + share * own
        part = above_in_group / in_group.clamp(min=1)                            # an empty group has none above
        j = b // self.group
        concepts_above = self.inside.sum(dim=1, dtype=torch.int64) - _at(self.inside.cumsum(dim=1), j)
        inter = (concepts_above.double() + part[:, :, None] * _at(self.inside, j).double()).sum(dim=1)
        return inter, area

    def _share_of_width(self, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Fraction of bin b above t if its values were spread evenly over the bin."""
        return ((self.lo + self.width * (b + 1) - t) / self.width).clamp(0, 1)

    def _share_of_raw(self, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Fraction of the raw values of bin b above t, read from their min and max (0 on a point mass at t)."""
        low = self.raw.low.gather(1, b[:, None]).squeeze(1).double()
        high = self.raw.high.gather(1, b[:, None]).squeeze(1).double()
        spread = (high - t) / (high - low).clamp(min=1e-300)                     # in (0, 1] where low ≤ t < high
        return torch.where(high <= t, 0.0, torch.where(low > t, 1.0, spread))


class _Bins:
    """Count, min and max of the values in each bin of each unit (min/max in float32, as the activations)."""

    def __init__(self, units: int, bins: int, dtype: torch.dtype, device: torch.device):
        self.counts = torch.zeros(units, bins, dtype=dtype, device=device)
        self.low = torch.full((units, bins), math.inf, dtype=torch.float32, device=device)
        self.high = torch.full((units, bins), -math.inf, dtype=torch.float32, device=device)

    def add(self, units: torch.Tensor, bins: torch.Tensor, values: torch.Tensor) -> None:
        flat = units * self.counts.shape[1] + bins
        self.counts.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=self.counts.dtype))
        self.low.view(-1).scatter_reduce_(0, flat, values.float(), "amin")
        self.high.view(-1).scatter_reduce_(0, flat, values.float(), "amax")

    def regrid(self, units: torch.Tensor, index: torch.Tensor) -> None:
        """Move bin j of unit ``units[i]`` to bin ``index[i, j]`` (bins that meet are merged)."""
        self.counts[units] = _moved(self.counts[units], index)
        low, high = self.low[units], self.high[units]
        self.low[units] = torch.full_like(low, math.inf).scatter_reduce_(1, index, low, "amin")
        self.high[units] = torch.full_like(high, -math.inf).scatter_reduce_(1, index, high, "amax")

    def reducible(self) -> list[tuple[torch.Tensor, str]]:
        return [(self.counts, "sum"), (self.low, "min"), (self.high, "max")]


def _moved(counts: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``counts`` (K, bins, ...) with bin j of unit k added into bin ``index[k, j]``."""
    full = index.view(*index.shape, *([1] * (counts.dim() - 2))).expand_as(counts)
    return torch.zeros_like(counts).scatter_add_(1, full, counts)


def _at(values: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``values[k, b[k], ...]`` for every unit k."""
    index = b.view(-1, 1, *([1] * (values.dim() - 2))).expand(-1, 1, *values.shape[2:])
    return values.gather(1, index).squeeze(1)


def _count_dtype(total: int) -> torch.dtype:
    """int32 counts where no count can exceed it (half the memory of int64), int64 otherwise."""
    return torch.int32 if total < 2 ** 31 else torch.int64


def _start_exp(lo: torch.Tensor, vmax: torch.Tensor, bins: int) -> torch.Tensor:
    """The first grid's width exponent: [lo, vmax] fills about half the bins.

    That leaves room for larger values to come without regridding. A unit constant so far (e.g. a dead
    ReLU) gets at least 2^-10 of the layer's widest span (float32 resolves 2^-24 of a value).
    """
    span = vmax - lo
    span = torch.maximum(span, torch.maximum(lo.abs(), vmax.abs()) * 2.0 ** -20)
    span = torch.maximum(span, span.max() * 2.0 ** -10).clamp(min=2.0 ** -100)
    return torch.ceil(torch.log2(2 * span / bins)).long()


def _down_to_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` (float64) rounded down to float32, so ``values >= result`` keeps every value ≥ ``x``."""
    f = x.float()
    return torch.where(f.double() > x, torch.nextafter(f, torch.full_like(f, -math.inf)), f)
