"""Dissection counts and cell upsampling: memory limits at their values, count types, top images, chunks, flat cells."""

import pytest
import torch
import torch.nn.functional as F

import inspectnet.analysis.dissect.counts as counts
from inspectnet.analysis.dissect.counts import DissectionCounts, _size
from inspectnet.analysis.dissect.upsample import CellUpsampler
from inspectnet.core.errors import InspectnetError


def _batch(images: int, units: int, map_size: tuple[int, int], concepts: int, mask_size: tuple[int, int], start: int = 0):
    """Random maps, empty masks and the dataset indices of ``images`` images."""
    g = torch.Generator().manual_seed(start)
    maps = {"conv": torch.rand(images, units, *map_size, generator=g)}
    return maps, torch.zeros(images, concepts, *mask_size, dtype=torch.bool), torch.arange(start, start + images)


# ---------------------------------------------------------------- memory limits
def test_a_layer_whose_concept_counts_pass_one_gib_is_refused():
    """1 unit × (2^19 + 1) concepts × 256 concept bins × 2 int32 counts = 1 GiB + 2 KiB: just over the limit."""
    c = DissectionCounts(1, (1, 1), (1 << 19) + 1, quantile=0.5)
    with pytest.raises(InspectnetError, match="1 units × 524289 concepts would take 1.0 GiB; dissect it with passes=2"):
        c.accumulate(*_batch(1, 1, (1, 1), (1 << 19) + 1, (1, 1)))


def test_the_first_of_two_passes_keeps_no_concept_counts_so_no_memory_limit_refuses_it(monkeypatch):
    monkeypatch.setattr(counts, "MAX_CONCEPT_COUNT_BYTES", 0)
    first = DissectionCounts(4, (2, 2), 3, quantile=0.25, overlaps=False)
    maps = {"conv": torch.arange(16.).reshape(4, 1, 2, 2)}                       # values 0..15 of one unit
    first.accumulate(maps, torch.zeros(4, 3, 2, 2, dtype=torch.bool), torch.arange(4))
    assert first.thresholds()["conv"].item() == pytest.approx(11.0)              # 12..15 lie above it: the top quarter
    with pytest.raises(InspectnetError, match="passes=2"):
        DissectionCounts(4, (2, 2), 3, quantile=0.25).accumulate(maps, torch.zeros(4, 3, 2, 2, dtype=torch.bool),
                                                                 torch.arange(4))


def test_bins_not_a_multiple_of_the_concept_group_are_refused_by_name_when_whole_groups_fit(monkeypatch):
    """40 bins hold two whole concept bins of 16: 1 unit × 1 concept × 2 × 2 × 4 bytes = 16 bytes, within the limit."""
    monkeypatch.setattr(counts, "MAX_CONCEPT_COUNT_BYTES", 16)
    with pytest.raises(InspectnetError, match="bins must be a multiple of 16 and ≥ 32, got 40"):
        DissectionCounts(2, (2, 2), 1, quantile=0.5, bins=40).accumulate(*_batch(2, 1, (2, 2), 1, (2, 2)))


def test_batches_wait_until_they_hold_more_than_64_mib():
    """Images of exactly 1 MiB each: 255 masks of 64 × 64 bytes and a 32 × 32 float32 map."""
    per_image = _size(*_batch(1, 1, (32, 32), 255, (64, 64))[:2])
    assert per_image == 1 << 20
    c = DissectionCounts(65, (64, 64), 255, quantile=0.5, bins=32)
    c.accumulate(*_batch(1, 1, (32, 32), 255, (64, 64)))
    c.accumulate(*_batch(63, 1, (32, 32), 255, (64, 64), start=1))
    assert (len(c._held), c._held_bytes) == (2, 64 << 20)                        # exactly 64 MiB: both wait
    c.accumulate(*_batch(1, 1, (32, 32), 255, (64, 64), start=64))
    assert (len(c._held), c._held_bytes) == (2, 64 << 20)                        # one more image: the oldest is counted
    assert [len(m) for _, m, _ in c._held] == [63, 1]


def test_a_batch_takes_the_bytes_of_masks_and_maps_of_any_element_size():
    maps = {"a": torch.zeros(2, 3, 4, 5, dtype=torch.float16)}
    assert _size(maps, torch.zeros(2, 7, 8, 9, dtype=torch.int16)) == 2 * 60 * 2 + 2 * 7 * 72 * 2


# ---------------------------------------------------------------- count types
@pytest.mark.parametrize("images, dtype", [((1 << 21) - 1, torch.int32), (1 << 21, torch.int64)])
def test_upsampled_counts_are_int64_once_the_pass_holds_two_to_the_31_mask_pixels(images, dtype):
    """Masks of 64 × 16 pixels: 2^21 images hold 2^31 of them, one image fewer 2^31 − 1024."""
    c = DissectionCounts(images, (64, 16), 2, quantile=0.5)
    c.accumulate(*_batch(1, 1, (4, 2), 2, (64, 16)))
    sketch = c.sketches["conv"]
    assert (sketch.up.dtype, sketch.inside.dtype) == (dtype, dtype)


# ---------------------------------------------------------------- top images
def test_eight_top_images_by_default_equal_values_to_the_smaller_index():
    """Two batches of 20 images: unit 0 is the same everywhere, unit 1's maximum is its image index mod 7."""
    c = DissectionCounts(40, (2, 2), 1, quantile=0.5)
    for start in (0, 20):
        ids = torch.arange(start, start + 20)
        maps = torch.zeros(20, 2, 2, 2)
        maps[:, 0] = 1.0
        maps[:, 1, 1, 1] = (ids % 7).float()
        c.accumulate({"conv": maps}, torch.zeros(20, 1, 2, 2, dtype=torch.bool), ids)
    values, ids = c.tops["conv"]
    assert ids.tolist() == [list(range(8)), [6, 13, 20, 27, 34, 5, 12, 19]]
    assert values.tolist() == [[1.0] * 8, [6.0] * 5 + [5.0] * 3]


# ---------------------------------------------------------------- cell upsampling
def _chunks(in_size, out_size, maps, floors):
    """The selections of ``above``, after checking that together they are the pixels above the floors."""
    chunks = list(CellUpsampler(in_size, out_size).above(maps, floors))
    full = F.interpolate(maps, size=out_size, mode="bilinear", align_corners=False)[0].flatten(1)
    got = torch.full_like(full, float("nan"))
    for sel in chunks:
        got[sel.units, sel.pixels] = sel.values
    above = full > floors[:, None]
    assert torch.equal(got.isnan(), ~above) and (got[above] - full[above]).abs().max() <= 1e-6
    return chunks


@pytest.mark.parametrize("in_size, out_size, units, cells_per_chunk, chunks", [
    ((2, 2), (1024, 1024), 2, 16, 2),    # cells of up to 512 × 512 pixels; two units have 2 × 9 cells
    ((64, 2), (64, 1024), 43, 8192, 2),  # cells of one row of up to 512 pixels; 43 units have 43 × 65 × 3 cells
    ((1, 1), (2050, 4096), 1, 1, 4),     # cells of up to 1025 × 2048 pixels, over half the bound: one a chunk
])
def test_cell_upsampling_evaluates_at_most_four_million_values_per_chunk(in_size, out_size, units, cells_per_chunk,
                                                                         chunks):
    """A chunk holds the cells whose largest (rows × columns) fits 2^22 values, at least one."""
    maps = torch.rand(1, units, *in_size, generator=torch.Generator().manual_seed(0))
    got = _chunks(in_size, out_size, maps, torch.full((units,), float("-inf")))
    assert len(got) == -(-units * (in_size[0] + 1) * (in_size[1] + 1) // cells_per_chunk) == chunks
    if in_size == (2, 2):            # the first 16 cells: unit 0's nine, then seven of unit 1's (two rows and one)
        assert [len(sel.pixels) for sel in got] == [(1 << 20) + 768 * 1024 + 256 * 256, 256 * 512 + 256 * 256]


def test_cells_whose_corners_lie_at_the_floor_are_never_evaluated():
    """Unit 0 is 0.5 everywhere, its floor: none of its nine cells is evaluated, unit 1's nine fill one chunk."""
    maps = torch.stack([torch.full((2, 2), 0.5), torch.rand(2, 2, generator=torch.Generator().manual_seed(0))])[None]
    got = _chunks((2, 2), (1024, 1024), maps, torch.tensor([0.5, float("-inf")]))
    assert len(got) == 1 and got[0].units.unique().tolist() == [1]


def test_upsampling_to_an_empty_size_selects_no_pixel():
    sel = next(CellUpsampler((1, 1), (0, 0)).above(torch.ones(1, 1, 1, 1), torch.zeros(1)))
    assert [len(t) for t in sel] == [0] * 5


def _flat_by_cell(maps: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Per output pixel, whether the four corners of its cell are equal.

    A pixel with source position s = (i + 0.5)·n_in / n_out − 0.5 (float32, as PyTorch computes it) lies
    before input 0 if s < 0, else between inputs ⌊s⌋ and ⌊s⌋ + 1, clamped to the last input.
    """
    def neighbours(n_in, n_out):
        s = torch.tensor(n_in, dtype=torch.float32) / n_out * (torch.arange(n_out, dtype=torch.float32) + 0.5) - 0.5
        low = torch.where(s < 0, 0, s.floor().long())
        return low, torch.where(s < 0, 0, (low + 1).clamp(max=n_in - 1))

    (r0, r1), (c0, c1) = neighbours(maps.shape[-2], out_size[0]), neighbours(maps.shape[-1], out_size[1])
    corners = [maps[..., r[:, None], c[None, :]] for r in (r0, r1) for c in (c0, c1)]
    return (corners[0] == corners[1]) & (corners[0] == corners[2]) & (corners[0] == corners[3])


@pytest.mark.parametrize("second, out_size", [
    ([[2., 2., 5.], [3., 3., 5.]], (2, 3)),           # the same size: every pixel lies on an input
    ([[2., 2., 5.], [3., 3., 5.]], (6, 9)),           # three times: the second pixel of each axis lies on input 0
    ([[2., 2.], [3., 2.], [2., 3.]], (5, 7)),          # cells with three, or two opposite, equal corners
])
def test_pixels_are_flat_exactly_where_their_cell_has_four_equal_corners(second, out_size):
    """A pixel whose source lies on input 0 lies between inputs 0 and 1, as every other pixel on an input does."""
    second = torch.tensor(second)
    in_size = tuple(second.shape)
    maps = torch.stack([torch.arange(6.).reshape(in_size), second])[None]
    flat = torch.zeros(1, 2, *out_size, dtype=torch.bool)
    values = torch.full((1, 2, *out_size), float("nan"))
    for sel in CellUpsampler(in_size, out_size).above(maps, torch.full((2,), float("-inf"))):
        flat.view(2, -1)[sel.units, sel.pixels] = sel.flat
        values.view(2, -1)[sel.units, sel.pixels] = sel.values
    expected = _flat_by_cell(maps, out_size)
    assert torch.equal(flat, expected)
    assert (values - F.interpolate(maps, size=out_size, mode="bilinear", align_corners=False)).abs().max() <= 1e-6
    if in_size == out_size:      # distinct values: only the bottom-right pixel lies in a cell of one input
        assert expected[0, 0].nonzero().tolist() == [[in_size[0] - 1, in_size[1] - 1]]
