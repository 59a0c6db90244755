"""The tail sketch's counts, threshold and overlaps against literal transcriptions of their definitions.

A unit's fine bins are ``[lo + j·w, lo + (j+1)·w)``. The threshold is interpolated between the smallest and
largest counted value of the bin holding the value of rank ⌈(1 − q)·N⌉, at the share
``(target − before) / inside`` of them; the areas above a threshold t are the pixels in higher bins plus the
share of t's bin above t (by its raw minimum and maximum for flat-cell pixels, by the bin's width for the
others); the concept overlaps take, in the concept bin holding t, the share of that bin's pixels of each kind
found above t. Each reference below is computed from the values fed, with ``numpy`` and plain loops.
"""

import math

import numpy as np
import pytest
import torch

from inspectnet.analysis.dissect.tail import TailSketch
from inspectnet.core.errors import InspectnetError


def _grid(s: TailSketch, k: int) -> tuple[float, float]:
    return float(s.lo[k]), float(s.width[k])


def _bin_of(v: np.ndarray, lo: float, w: float, bins: int) -> np.ndarray:
    return np.clip(np.floor((v - lo) / w), 0, bins - 1).astype(int)


def _assert_every_count_in_its_bin(s: TailSketch, values: np.ndarray, floor: torch.Tensor | None = None) -> None:
    """Every counted value lies inside its bin; a bin wholly above the floor holds exactly the values in its range,
    with their exact minimum and maximum."""
    floor = s.floor if floor is None else floor
    counts, low, high = s.raw.counts.numpy(), s.raw.low.double().numpy(), s.raw.high.double().numpy()
    for k in range(s.units):
        lo, w = _grid(s, k)
        v = values[k]
        for j in np.flatnonzero(counts[k]):
            assert lo + j * w <= low[k, j] <= high[k, j] < lo + (j + 1) * w, (k, j, lo, w, low[k, j], high[k, j])
        for j in range(s.bins):
            if lo + j * w < float(floor[k]):
                continue
            inside = v[(v >= lo + j * w) & (v < lo + (j + 1) * w)]
            assert counts[k, j] == inside.size, (k, j)
            if inside.size:
                assert (low[k, j], high[k, j]) == (inside.min(), inside.max()), (k, j)


def _first_floor(first_batch: np.ndarray, total: int, quantile: float) -> np.ndarray:
    target = (1.0 - quantile) * total
    need = math.floor(total - target) + 1
    if first_batch.shape[1] < need:
        return first_batch.min(axis=1)
    return -np.sort(-first_batch, axis=1)[:, need - 1]


def _reference_threshold(values: np.ndarray, first_batch: np.ndarray, s: TailSketch, quantile: float) -> np.ndarray:
    """The threshold on a grid set by the first batch and never moved (that batch holds the largest value).

    Counted values of the rank's bin: those at or above the first floor; ``before``: every value below them.
    """
    total = values.shape[1]
    target = (1.0 - quantile) * total
    rank = math.ceil(target)
    floors = _first_floor(first_batch, total, quantile)
    out = []
    for k in range(values.shape[0]):
        lo, w = _grid(s, k)
        v = np.sort(values[k])
        b = math.floor((v[rank - 1] - lo) / w)
        cutoff = max(lo + b * w, floors[k])
        counted = v[(v >= cutoff) & (v < lo + (b + 1) * w)]
        before = np.count_nonzero(v < cutoff)
        est = counted.min() + (counted.max() - counted.min()) * (target - before) / counted.size
        out.append(min(max(est, v[0]), v[-1]))
    return np.array(out)


def _units(rng: np.random.Generator, n: int) -> np.ndarray:
    """Four kinds of unit: spread, ReLU-like (most values 0), few distinct values, tiny magnitudes."""
    spread = rng.standard_normal(n) * 3 + 1
    relu = np.maximum(rng.standard_normal(n), 0)
    levels = rng.integers(0, 6, n) * 0.5
    tiny = rng.random(n) * 1e-12
    return np.stack([spread, relu, levels, tiny]).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("quantile, bins, group", [(0.05, 32, 16), (0.3, 64, 8), (0.005, 256, 16), (0.5, 32, 8)])
@pytest.mark.parametrize("batches", [1, 5])
def test_threshold_is_the_interpolation_inside_the_bin_of_the_threshold_rank(quantile, bins, group, batches):
    rng = np.random.default_rng(bins + batches)
    values = _units(rng, 1200)
    order = np.argsort(-values, axis=1)[:, :1]                    # the largest value of each unit comes first
    values = np.concatenate([np.take_along_axis(values, order, 1),
                             np.delete(values, order[:, 0] + np.arange(4) * 1200).reshape(4, -1)], axis=1)
    chunks = np.array_split(values, batches, axis=1)
    s = TailSketch(4, values.shape[1], quantile, bins=bins, group=group)
    for c in chunks:
        s.update(torch.from_numpy(c).float())
    expected = _reference_threshold(values, chunks[0], s, quantile)
    np.testing.assert_allclose(s.threshold().numpy(), expected, rtol=1e-12, atol=0)
    _assert_every_count_in_its_bin(s, values)


@pytest.mark.parametrize("seed", range(4))
def test_counts_stay_exact_while_the_grid_coarsens_in_both_directions(seed):
    """Batches drift up and down, so the grid moves many times; bins above the floor still hold exact counts."""
    rng = np.random.default_rng(seed)
    chunks = [_units(rng, 300) * (1 + i) + (i % 3 - 1) * 2.0 * (1 + i) for i in range(8)]
    chunks = [c.astype(np.float32).astype(np.float64) for c in chunks]
    values = np.concatenate(chunks, axis=1)
    s = TailSketch(4, values.shape[1], 0.02, bins=32, group=16)
    exps = []
    for c in chunks:
        s.update(torch.from_numpy(c).float())
        exps.append(s.exp.clone())
        _assert_every_count_in_its_bin(s, np.concatenate(chunks[:len(exps)], axis=1))
    assert any((b != a).any() for a, b in zip(exps, exps[1:]))    # the grid did move
    exact = np.quantile(values, 0.98, axis=1, method="inverted_cdf")
    assert np.all(np.abs(s.threshold().numpy() - exact) <= s.width.numpy())


def test_a_value_at_the_top_edge_of_the_grid_coarsens_it_one_below_does_not():
    s = TailSketch(1, 1000, 0.5, bins=32, group=16)
    s.update(torch.tensor([[0.0, 1.0]]))
    lo, w = _grid(s, 0)
    top = lo + 32 * w
    below = torch.tensor([[np.nextafter(np.float32(top), np.float32(0))]])
    s.update(below)                                   # in the top group, inside the grid: the grid stays
    assert _grid(s, 0) == (lo, w)
    assert int(s.raw.counts[0, 31]) == 1
    s.update(torch.tensor([[top]]))                   # on the top edge: outside [lo, lo + 32·w), the width doubles
    assert float(s.width[0]) == 2 * w
    _assert_every_count_in_its_bin(s, np.array([[0.0, 1.0, float(below), top]]))


def test_one_batch_of_every_value_bins_only_the_values_from_the_threshold_rank_up():
    """floor(q·N) + 1 values: the top q·N and the one at the threshold's rank (distinct values)."""
    values = torch.randperm(1000).float()[None] / 7
    for quantile, kept in [(0.005, 6), (0.1, 101), (0.0125, 13)]:
        s = TailSketch(1, 1000, quantile, bins=64)
        s.update(values)
        assert int(s.raw.counts.sum()) == kept, quantile


def test_single_values_and_empty_batches_are_counted_as_they_come():
    values = torch.arange(40.0)[None] * 0.25
    whole, one_by_one = TailSketch(1, 40, 0.1, bins=32), TailSketch(1, 40, 0.1, bins=32)
    whole.update(values)
    for j in range(40):
        one_by_one.update(torch.zeros(1, 0))
        one_by_one.update(values[:, j:j + 1])
    assert one_by_one.seen == 40
    exact = np.quantile(values.numpy()[0], 0.9, method="inverted_cdf")
    assert abs(float(one_by_one.threshold()[0]) - exact) <= float(one_by_one.width[0])
    assert abs(float(whole.threshold()[0]) - exact) <= float(whole.width[0])


def test_concept_bins_of_one_fine_bin_count_each_fine_bin():
    """group = 1 (2^0): the concept counts are the fine counts, so overlaps are exact at bin edges."""
    s = TailSketch(1, 10 ** 6, 0.5, concepts=1, upsampled_total=100, bins=4, group=1)
    s.update(torch.tensor([[0.0, 1.0]]))
    lo, w = _grid(s, 0)
    values = torch.tensor([lo + 0.5 * w, lo + 1.5 * w, lo + 1.75 * w], dtype=torch.float32)
    s.add_upsampled(torch.zeros(3, dtype=torch.long), values, torch.zeros(3, dtype=torch.long), torch.arange(3),
                    torch.tensor([[1], [0], [1]], dtype=torch.int32), torch.tensor([True, False, True]))
    inter, area = s.overlaps(torch.tensor([lo + w]))
    assert area.tolist() == [2.0] and inter.tolist() == [[1.0]]


def test_a_sketch_of_no_values_is_refused_one_value_is_its_own_threshold():
    with pytest.raises(InspectnetError, match="at least one value per unit, got total=0"):
        TailSketch(1, 0, 0.5, bins=32)
    s = TailSketch(2, 1, 0.005, bins=32)
    s.update(torch.tensor([[-2.5], [7.0]]))
    assert s.threshold().tolist() == [-2.5, 7.0]


@pytest.mark.parametrize("shape", [(3, 5), (5,), (2, 5, 1)])
def test_values_of_another_unit_count_or_shape_are_refused(shape):
    s = TailSketch(2, 10, 0.5, bins=32)
    with pytest.raises(InspectnetError, match=r"expects \(2, M\) values"):
        s.update(torch.zeros(shape))


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_infinite_or_nan_activations_are_refused(bad):
    s = TailSketch(2, 10, 0.5, bins=32)
    with pytest.raises(InspectnetError, match="NaN or inf"):
        s.update(torch.tensor([[1.0, 2.0], [3.0, bad]]))
    assert s.seen == 0


def test_counts_are_int32_below_two_to_the_31_values_and_int64_from_there():
    assert TailSketch(1, 2 ** 31 - 1, 0.5, bins=32).raw.counts.dtype == torch.int32
    assert TailSketch(1, 2 ** 31, 0.5, bins=32).raw.counts.dtype == torch.int64
    s = TailSketch(1, 10, 0.5, bins=32, concepts=2, upsampled_total=2 ** 31)
    assert (s.up.dtype, s.inside.dtype) == (torch.int64, torch.int64)
    s = TailSketch(1, 10, 0.5, bins=32, concepts=2, upsampled_total=2 ** 31 - 1)
    assert (s.up.dtype, s.inside.dtype, s.inside.shape) == (torch.int32, torch.int32, (1, 2, 2, 2))


@pytest.mark.parametrize("values, exp", [
    ([[1.0, 1.0]], -24),                 # constant: 2^-20 of its magnitude spread over half the 32 bins
    ([[-3.0, -3.0]], -22),               # the magnitude, not the sign: ⌈log2(2·3·2^-20 / 32)⌉
    ([[0.0, 0.0]], -104),                # constant zero alone: the smallest span, 2^-100
    ([[0.0, 1023.0], [5.0, 5.0]], -4),   # a unit constant so far gets 2^-10 of the widest span, 1023
])
def test_the_first_grid_spreads_the_first_range_over_half_the_bins(values, exp):
    s = TailSketch(len(values), 10 ** 6, 0.5, bins=32)        # far more values to come: the first floor is the minimum
    s.update(torch.tensor(values))
    assert s.exp.tolist()[-1] == exp


def test_the_gate_rounds_a_float64_floor_down_to_float32():
    s = TailSketch(3, 10, 0.5, bins=32)
    s.floor = torch.tensor([1 - 2 ** -30, 1.0, -(1 + 2 ** -30)], dtype=torch.float64)
    gate = s.gate
    assert gate.dtype == torch.float32
    assert gate.tolist() == [1 - 2 ** -24, 1.0, -(1 + 2 ** -23)]


def test_merging_a_sketch_that_saw_nothing_changes_nothing():
    """A rank with no batch: its empty sketch adds no counts and does not coarsen tiny-valued units' grids."""
    rng = np.random.default_rng(3)
    values = _units(rng, 500)[3:]
    full = TailSketch(1, 500, 0.05, bins=32)
    full.update(torch.from_numpy(values).float())
    before = (full.threshold().clone(), full.exp.clone(), full.raw.counts.clone())
    assert int(full.exp[0]) < -40                                 # values below 1e-12: a grid finer than 2^-40
    full.merge(TailSketch(1, 500, 0.05, bins=32))
    assert torch.equal(full.threshold(), before[0]) and torch.equal(full.exp, before[1])
    assert torch.equal(full.raw.counts, before[2])
    empty = TailSketch(1, 500, 0.05, bins=32)
    empty.merge(full)
    assert torch.equal(empty.threshold(), before[0])


def test_merged_shards_hold_every_count_of_both_in_its_bin():
    """Two shards on different grids (one spans far more than the other) merged onto the common grid."""
    rng = np.random.default_rng(5)
    left, right = _units(rng, 400), (_units(rng, 400) * 8 - 3).astype(np.float32).astype(np.float64)
    a, b = (TailSketch(4, 800, 0.02, bins=32, group=16) for _ in range(2))
    a.update(torch.from_numpy(left).float())
    b.update(torch.from_numpy(right).float())
    assert not torch.equal(a.lo, b.lo)
    floor = torch.maximum(a.floor, b.floor)                       # each shard dropped what lay below its own floor
    a.merge(b)
    values = np.concatenate([left, right], axis=1)
    assert a.vmin.tolist() == values.min(axis=1).tolist() and a.vmax.tolist() == values.max(axis=1).tolist()
    _assert_every_count_in_its_bin(a, values, floor)
    exact = np.quantile(values, 0.98, axis=1, method="inverted_cdf")
    assert np.all(np.abs(a.threshold().numpy() - exact) <= a.width.numpy())


# ---------------------------------------------------------------- overlaps
def _reference_overlaps(s: TailSketch, raw: np.ndarray, pixels: list[dict], t: np.ndarray):
    """|S_k| and |S_k ∩ L_c| above ``t`` from the fed pixels, by the definition in the module docstring."""
    concepts = s.inside.shape[-1]
    inter, area = np.zeros((s.units, concepts)), np.zeros(s.units)
    for k in range(s.units):
        lo, w = _grid(s, k)
        b = int(_bin_of(np.array([t[k]]), lo, w, s.bins)[0])
        j = b // s.group
        in_b = raw[k][_bin_of(raw[k], lo, w, s.bins) == b]
        low, high = (in_b.min(), in_b.max()) if in_b.size else (math.inf, -math.inf)
        share_raw = 0.0 if high <= t[k] else 1.0 if low > t[k] else (high - t[k]) / (high - low)
        share_width = min(max((lo + (b + 1) * w - t[k]) / w, 0.0), 1.0)
        for flat, share in ((False, share_width), (True, share_raw)):
            mine = [p for p in pixels if p["unit"] == k and p["flat"] == flat]
            fine = np.array([_bin_of(np.array([p["value"]]), lo, w, s.bins)[0] for p in mine], dtype=int)
            above = np.count_nonzero(fine > b) + share * np.count_nonzero(fine == b)
            area[k] += above
            group = fine // s.group == j
            above_in_group = np.count_nonzero(group & (fine > b)) + share * np.count_nonzero(fine == b)
            part = above_in_group / np.count_nonzero(group) if group.any() else 0.0
            for p, f in zip(mine, fine):
                cj = f // s.group
                inter[k] += np.asarray(p["concepts"]) * (1.0 if cj > j else part if cj == j else 0.0)
    return inter, area


def _feed_pixels(s: TailSketch, rng: np.random.Generator, n: int, low: np.ndarray, high: np.ndarray) -> list[dict]:
    concepts = s.inside.shape[-1]
    units = rng.integers(0, s.units, n)
    values = (low[units] + rng.random(n) * (high[units] - low[units])).astype(np.float32)
    values[::7] = high[units[::7]].astype(np.float32)             # some on the units' largest values
    flat = rng.random(n) < 0.4
    table = rng.random((n, concepts)) < 0.35
    table[::5] = False                                            # some pixels inside no concept
    s.add_upsampled(torch.from_numpy(units), torch.from_numpy(values), torch.from_numpy(flat).long(),
                    torch.arange(n), torch.from_numpy(table).int(), torch.from_numpy(table.any(axis=1)))
    return [{"unit": int(u), "value": float(v), "flat": bool(f), "concepts": c.astype(float)}
            for u, v, f, c in zip(units, values, flat, table)]


def _sketch_with_raw(rng: np.random.Generator, scale: float, shift: float):
    raw = (rng.random((2, 60)) * scale + shift).astype(np.float32)
    raw[:, :10] = raw[:, 10:11]                                    # a point mass in each unit
    s = TailSketch(2, 10 ** 6, 0.5, concepts=3, upsampled_total=10 ** 6, bins=32, group=8)
    s.update(torch.from_numpy(raw))                                # far more to come: every value is counted
    return s, raw.astype(np.float64)


def _thresholds_to_try(s: TailSketch, raw: np.ndarray) -> list[np.ndarray]:
    lo, w = s.lo.numpy(), s.width.numpy()
    return [raw[:, 10],                                            # on the point mass
            raw[:, 10] - 1e-7 * np.abs(raw[:, 10]),                # just below it
            lo + 3.37 * w,                                         # inside a bin of the first concept group
            lo + 8 * w,                                            # on a concept group's lower edge
            lo + 15.5 * w,                                         # in a concept group's last bin
            raw.max(axis=1) - 0.25 * w,                            # in the grid's last occupied bin
            np.sort(raw, axis=1)[:, 40],                           # on a raw value
            lo - 2 * w]                                            # below the grid: every counted pixel is above


def test_overlaps_and_areas_are_the_counts_above_the_threshold_with_its_bin_shared_by_kind():
    rng = np.random.default_rng(0)
    s, raw = _sketch_with_raw(rng, 4.0, -1.0)
    pixels = _feed_pixels(s, rng, 600, s.gate.double().numpy(), raw.max(axis=1))
    for t in _thresholds_to_try(s, raw):
        inter, area = s.overlaps(torch.from_numpy(t))
        ref_inter, ref_area = _reference_overlaps(s, raw, pixels, t)
        np.testing.assert_allclose(area.numpy(), ref_area, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(inter.numpy(), ref_inter, rtol=1e-12, atol=1e-9)
        assert (area.numpy() > 0).all() and (inter.numpy() > 0).any()


def test_moving_onto_a_grid_that_starts_lower_keeps_every_count_in_its_bin_up_to_the_top_one():
    """Values [0, 1.9375] on [0, 4) by eighths, moved onto [−2, 2) by eighths (the same width, a lower start):
    the largest value lands in the new top fine bin and top concept bin."""
    s = TailSketch(1, 10 ** 6, 0.5, concepts=1, upsampled_total=100, bins=32, group=16)
    raw = torch.tensor([[0.0, 0.3, 1.0, 1.9375]])
    s.update(raw)
    assert _grid(s, 0) == (0.0, 0.125)
    pixels = [0.3, 1.9375, 1.95]
    s.add_upsampled(torch.zeros(3, dtype=torch.long), torch.tensor(pixels), torch.tensor([0, 1, 0]), torch.arange(3),
                    torch.ones(3, 1, dtype=torch.int32), torch.ones(3, dtype=torch.bool))
    s.regrid(torch.tensor([-2.0], dtype=torch.float64), s.vmax, s.exp)
    assert _grid(s, 0) == (-2.0, 0.125)
    _assert_every_count_in_its_bin(s, raw.double().numpy())
    assert int(s.raw.counts[0, 31]) == 1 and s.up[0, 31].tolist() == [1, 1] and s.inside[0, 1, :, 0].tolist() == [2, 1]
    for t in (1.875, 1.75, 0.25, -3.0):                                # bin edges, and below the grid
        inter, area = s.overlaps(torch.tensor([t]))
        expected = sum(1 for v in pixels if v > t)
        assert area.tolist() == [expected] and inter.tolist() == [[expected]], t


@pytest.mark.parametrize("lo_shift, exp_shift", [(100, 1), (0, -1)])
def test_a_grid_that_does_not_cover_the_sketchs_own_is_refused(lo_shift, exp_shift):
    """A start above the sketch's own, or a finer width: its counts would not fall into whole bins."""
    s = TailSketch(1, 10 ** 6, 0.5, bins=32, group=16)
    s.update(torch.tensor([[0.0, 1.0, 17.0]]))
    lo, w = _grid(s, 0)
    with pytest.raises(InspectnetError, match="only move onto a coarser grid that covers its own"):
        s._regrid_to(s.lo + lo_shift * w, s.exp + exp_shift)


def test_a_threshold_below_the_grid_counts_every_pixel_once():
    s = TailSketch(1, 10 ** 6, 0.5, concepts=1, upsampled_total=100, bins=32, group=16)
    s.update(torch.tensor([[0.0, 3.1]]))
    lo, w = _grid(s, 0)
    assert lo == 0.0
    s.add_upsampled(torch.zeros(2, dtype=torch.long), torch.tensor([0.5 * w, 2.0], dtype=torch.float32),
                    torch.tensor([0, 1]), torch.arange(2), torch.tensor([[1], [0]], dtype=torch.int32),
                    torch.tensor([True, False]))
    for t in (-2 * w, -0.5 * w, -100.0):
        inter, area = s.overlaps(torch.tensor([t]))
        assert area.tolist() == [2.0] and inter.tolist() == [[1.0]], t


def test_a_threshold_above_the_grid_selects_no_pixel():
    rng = np.random.default_rng(2)
    s, raw = _sketch_with_raw(rng, 4.0, -1.0)
    _feed_pixels(s, rng, 200, s.gate.double().numpy(), raw.max(axis=1))
    for above in (s.lo + 32 * s.width, s.lo + 1000 * s.width):
        inter, area = s.overlaps(above)
        assert area.tolist() == [0.0, 0.0] and not inter.any()


def test_a_single_pixel_in_the_thresholds_concept_bin_is_shared_by_its_place_in_the_bin():
    s = TailSketch(1, 10 ** 6, 0.5, concepts=2, upsampled_total=100, bins=32, group=8)
    s.update(torch.tensor([[0.0, 3.1]]))
    lo, w = _grid(s, 0)
    value = lo + 9.75 * w                                          # fine bin 9, concept bin 1
    s.add_upsampled(torch.tensor([0]), torch.tensor([value], dtype=torch.float32), torch.tensor([0]),
                    torch.tensor([0]), torch.tensor([[1, 0]], dtype=torch.int32), torch.tensor([True]))
    inter, area = s.overlaps(torch.tensor([lo + 9.5 * w]))       # half of bin 9 lies above
    assert area.tolist() == [0.5] and inter.tolist() == [[0.5, 0.0]]
    inter, area = s.overlaps(torch.tensor([lo + 8.5 * w]))       # the pixel's bin lies wholly above
    assert area.tolist() == [1.0] and inter.tolist() == [[1.0, 0.0]]


def test_merged_sketches_keep_the_upsampled_and_concept_counts_of_both():
    rng = np.random.default_rng(1)
    a, raw_a = _sketch_with_raw(rng, 2.0, 0.0)
    b, raw_b = _sketch_with_raw(rng, 6.0, -2.0)
    pixels = _feed_pixels(a, rng, 300, a.gate.double().numpy(), raw_a.max(axis=1))
    pixels += _feed_pixels(b, rng, 300, b.gate.double().numpy(), raw_b.max(axis=1))
    a.merge(b)
    raw = np.concatenate([raw_a, raw_b], axis=1)
    for t in _thresholds_to_try(a, raw):
        inter, area = a.overlaps(torch.from_numpy(t))
        ref_inter, ref_area = _reference_overlaps(a, raw, pixels, t)
        np.testing.assert_allclose(area.numpy(), ref_area, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(inter.numpy(), ref_inter, rtol=1e-12, atol=1e-9)
