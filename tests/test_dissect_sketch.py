"""Per-unit streaming quantiles (UnitQuantiles): the power-of-two grid, exact quantiles where bins make them exact,
interpolation inside one bin, and refused input, against hand-computed values and brute-force references."""

import math

import numpy as np
import pytest
import torch

from inspectnet.analysis.dissect.sketch import UnitQuantiles
from inspectnet.core.errors import InspectnetError


def smallest_window(lo: float, hi: float, bins: int) -> tuple[int, int]:
    """(e, s) of the grid by its definition: the smallest e, not below exponent(max |v|) − 40, for which the cells
    floor(v / 2^e) from lo to hi number at most ``bins``; s is the cell of lo."""
    e = math.frexp(max(abs(lo), abs(hi)))[1] - 40
    while math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) >= bins:
        e += 1
    return e, math.floor(math.ldexp(lo, -e))


def fed(values, bins: int) -> UnitQuantiles:
    """A sketch of len(values) units, fed the (K, M) values in one batch."""
    values = torch.as_tensor(values, dtype=torch.float64)
    sketch = UnitQuantiles(values.shape[0], bins=bins)
    sketch.update(values)
    return sketch


@pytest.mark.parametrize("value", [3.0, -0.75, 1024.0, 1e-30, 0.0])
def test_quantile_sketch_constant_unit_has_the_relative_floor_width(value):
    sketch = fed([[value] * 5], bins=64)
    # frexp(3) = 0.75·2^2, frexp(0.75) = 0.75·2^0, frexp(1024) = 0.5·2^11, frexp(0) = 0·2^0
    expected = {3.0: 2.0 ** -38, -0.75: 2.0 ** -40, 1024.0: 2.0 ** -29, 0.0: 2.0 ** -40}.get(value)
    width = 2.0 ** (math.frexp(abs(value))[1] - 40)
    if expected is not None:
        assert width == expected
    assert sketch.bin_width().tolist() == [width]
    assert int(sketch.start[0]) == math.floor(value / width)
    for q in (0.0, 0.3, 1.0):
        assert sketch.quantile(q).tolist() == [value]


@pytest.mark.parametrize("bins, lo, hi, exp, start", [
    (4096, 0.0, 4095.0, 0, 0),    # 4096 unit cells hold 0..4095 exactly
    (4096, 0.0, 4096.0, 1, 0),    # one more value needs a 4097th unit cell: the width doubles
    (3, 0.0, 2.5, 0, 0),          # cells 0, 1, 2 of width 1; width 1/2 would need cells 0..5
    (2, 0.0, 1000.0, 9, 0),       # 1000 / 512 < 2 ≤ 1000 / 256
    (2, -1.0, 1.0, 1, -1),        # cells -1 and 0 of width 2; width 1 would need cells -1, 0, 1
    (8, -3.0, -0.5, -1, -6),      # cells -6..-1 of width 1/2
    (16, 100.0, 100.5, -4, 1600),  # far from zero: cells 1600..1608 of width 1/16; width 1/32 needs 3200..3216
])
def test_quantile_sketch_grid_is_the_smallest_power_of_two_window_holding_the_range(bins, lo, hi, exp, start):
    assert smallest_window(lo, hi, bins) == (exp, start)
    sketch = fed([[lo, hi, (lo + hi) / 2]], bins=bins)
    assert (int(sketch.exp[0]), int(sketch.start[0])) == (exp, start)
    assert sketch.bin_width().tolist() == [2.0 ** exp]
    assert start * 2.0 ** exp <= lo and hi < (start + bins) * 2.0 ** exp


@pytest.mark.parametrize("bins", [2, 3, 5, 8, 100, 4096])
def test_quantile_sketch_grid_matches_the_brute_force_smallest_window(bins):
    rng = np.random.default_rng(bins)
    lo = rng.normal(size=60) * 10.0 ** rng.integers(-6, 7, size=60)
    hi = lo + np.abs(rng.normal(size=60)) * 10.0 ** rng.integers(-9, 7, size=60)
    hi[::7] = lo[::7]  # some constant units
    sketch = fed(np.stack([lo, hi], axis=1), bins=bins)
    expected = [smallest_window(float(a), float(b), bins) for a, b in zip(lo, hi)]
    assert list(zip(sketch.exp.tolist(), sketch.start.tolist())) == expected
    assert sketch.bin_width().tolist() == [2.0 ** e for e, _ in expected]


def test_quantile_sketch_defaults_to_4096_bins():
    sketch = UnitQuantiles(2)
    assert tuple(sketch.counts.shape) == (2, 4096)
    sketch.update(torch.tensor([[0.0, 4095.0], [0.0, 4096.0]]))
    assert sketch.bin_width().tolist() == [1.0, 2.0]


@pytest.mark.parametrize("bins", [1, 0, -3])
def test_quantile_sketch_refuses_fewer_than_two_bins(bins):
    with pytest.raises(InspectnetError, match=f"bins must be at least 2, got {bins}"):
        UnitQuantiles(1, bins=bins)


def test_quantile_sketch_with_two_bins_counts_each_half():
    sketch = fed([[0.0, 1000.0, 300.0, 600.0]], bins=2)  # cells of width 512: {0, 300} and {600, 1000}
    assert sketch.counts.tolist() == [[2, 2]]
    assert sketch.quantile(0.0).tolist() == [0.0]
    assert sketch.quantile(0.25).tolist() == [150.0]  # half of bin 0's two values: 0 + (300 − 0)·(1 / 2)
    assert sketch.quantile(0.5).tolist() == [300.0]
    assert sketch.quantile(1.0).tolist() == [1000.0]


@pytest.mark.parametrize("shape", [(3, 4), (1, 4), (2,), (2, 4, 1), (4, 2)])
def test_quantile_sketch_refuses_values_not_shaped_units_by_observations(shape):
    sketch = UnitQuantiles(2, bins=8)
    with pytest.raises(InspectnetError, match=r"expects \(2, M\) values"):
        sketch.update(torch.zeros(shape))
    assert sketch.total == 0


def test_quantile_sketch_empty_update_changes_nothing_and_one_column_counts():
    sketch = fed([[1.0, 2.0, 3.0], [-4.0, 0.0, 4.0]], bins=16)
    state = [t.clone() for t in (sketch.counts, sketch.bmin, sketch.bmax, sketch.exp, sketch.start, sketch.min,
                                 sketch.max)]
    sketch.update(torch.empty(2, 0))
    assert sketch.total == 3
    after = (sketch.counts, sketch.bmin, sketch.bmax, sketch.exp, sketch.start, sketch.min, sketch.max)
    assert all(torch.equal(a, b) for a, b in zip(state, after))
    sketch.update(torch.tensor([[10.0], [-9.0]]))
    assert sketch.total == 4
    assert sketch.quantile(1.0).tolist() == [10.0, 4.0]
    assert sketch.quantile(0.0).tolist() == [1.0, -9.0]
    assert sketch.counts.sum(dim=1).tolist() == [4, 4]


@pytest.mark.parametrize("q", [-0.1, 1.5, 2.0, 1.0000001])
def test_quantile_sketch_refuses_q_outside_zero_one(q):
    sketch = fed([[1.0, 2.0]], bins=8)
    with pytest.raises(InspectnetError, match="quantile must be within"):
        sketch.quantile(q)


def test_quantile_sketch_refuses_a_quantile_of_nothing_and_reads_one_observation():
    sketch = UnitQuantiles(2, bins=8)
    with pytest.raises(InspectnetError, match="no values were streamed"):
        sketch.quantile(0.5)
    sketch.update(torch.tensor([[2.5], [-7.0]]))
    for q in (0.0, 0.5, 1.0):
        assert sketch.quantile(q).tolist() == [2.5, -7.0]


def test_quantile_sketch_q0_and_q1_are_the_minimum_and_maximum_exactly():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(4, 500)) * np.array([[1e-3], [1.0], [50.0], [1e4]]) + np.array([[0.0], [3.0], [-7.0], [1.0]])
    sketch = UnitQuantiles(4, bins=64)
    for chunk in np.array_split(values, 5, axis=1):  # the range grows as chunks arrive
        sketch.update(torch.from_numpy(chunk))
    assert sketch.quantile(0.0).tolist() == values.min(axis=1).tolist()
    assert sketch.quantile(1.0).tolist() == values.max(axis=1).tolist()


def test_quantile_sketch_interpolates_inside_a_bin_between_its_smallest_and_largest_value():
    # width-1 cells [i, i + 1) each hold i and i + 0.5: cumulative counts 2, 4, 6, 8; quantile q has rank 8q, which
    # falls in bin i = ceil(8q / 2) − 1 at fraction (8q − 2i) / 2 of its two values: i + 0.5·(8q − 2i) / 2
    sketch = fed([[3.5, 0.0, 2.5, 0.5, 1.0, 3.0, 1.5, 2.0]], bins=4)
    assert (int(sketch.exp[0]), int(sketch.start[0])) == (0, 0)
    assert sketch.counts.tolist() == [[2, 2, 2, 2]]
    for q, expected in [(1 / 8, 0.25), (2 / 8, 0.5), (3 / 8, 1.25), (5 / 8, 2.25), (6 / 8, 2.5), (7 / 8, 3.25),
                        (0.0, 0.0), (1.0, 3.5)]:
        assert sketch.quantile(q).tolist() == [expected], q


def test_quantile_sketch_with_one_value_per_bin_gives_the_exact_order_statistic():
    rng = np.random.default_rng(5)
    values = np.stack([rng.permutation(100), rng.permutation(np.arange(-40, 60) * 4)]).astype(np.float64)
    sketch = UnitQuantiles(2, bins=128)
    for chunk in np.array_split(values, 3, axis=1):
        sketch.update(torch.from_numpy(chunk))
    assert sketch.counts.max().item() == 1  # every bin holds at most one value
    ordered = np.sort(values, axis=1)
    for q in (0.0, 0.01, 0.115, 0.5, 0.731, 0.99, 0.995, 1.0):
        rank = max(math.ceil(q * 100) - 1, 0)  # the first value whose cumulative count reaches q·100
        assert sketch.quantile(q).tolist() == ordered[:, rank].tolist(), q


def test_quantile_sketch_point_mass_gives_its_value_exactly():
    values = torch.cat([torch.zeros(1, 900), torch.linspace(0.5, 8.0, 100)[None]], dim=1)
    sketch = fed(values, bins=32)
    for q in (0.0, 0.3, 0.5, 0.9):
        assert sketch.quantile(q).tolist() == [0.0]
    assert sketch.quantile(1.0).tolist() == [8.0]


def test_quantile_sketch_merged_while_empty_sits_on_the_grid_of_an_all_zero_unit():
    sketch = UnitQuantiles(2, bins=8)
    sketch.all_reduce()
    zeros = fed(torch.zeros(2, 3), bins=8)
    assert sketch.bin_width().tolist() == zeros.bin_width().tolist() == [2.0 ** -40] * 2
    assert sketch.start.tolist() == zeros.start.tolist() == [0, 0]
    assert sketch.total == 0 and sketch.counts.sum().item() == 0
    with pytest.raises(InspectnetError, match="no values were streamed"):
        sketch.quantile(0.5)
    data = torch.tensor([[1.0, 5.0, -2.0], [0.25, 0.5, 0.75]])
    sketch.update(data)
    fresh = fed(data, bins=8)
    for name in ("counts", "bmin", "bmax", "exp", "start", "min", "max"):
        assert torch.equal(getattr(sketch, name), getattr(fresh, name)), name


def test_quantile_sketch_refuses_a_range_whose_width_overflows_float64():
    sketch = UnitQuantiles(1, bins=4096)
    with pytest.raises(InspectnetError, match="activation range cannot be represented"):
        sketch.update(torch.tensor([[-1e308, 1e308]], dtype=torch.float64))


def test_quantile_sketch_of_float64_values_near_the_smallest_normal_keeps_its_extremes():
    """Magnitudes of 1e-300 would ask for bins of 2^-1036; they get 2^-1023, the narrowest ldexp can scale by."""
    sketch = UnitQuantiles(1, bins=16)
    values = torch.tensor([[1e-300, 1e-300 + 2e-314, 1e-300 + 1e-314]], dtype=torch.float64)
    sketch.update(values)
    assert float(sketch.bin_width()[0]) == 2.0 ** -1023
    assert sketch.quantile(0.0).tolist() == [1e-300] and sketch.quantile(1.0).tolist() == [1e-300 + 2e-314]
    assert int(sketch.counts.sum()) == 3
