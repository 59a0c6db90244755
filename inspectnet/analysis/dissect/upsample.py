"""Bilinear upsampling (PyTorch's ``align_corners=False``) evaluated only where it can exceed a floor.

Every upsampled pixel is a convex combination of the 2×2 input pixels around it, so it never exceeds
their maximum. The output pixels fall into cells, one per pair of input rows and pair of input
columns; a cell whose four corner pixels all lie at or below unit k's floor holds no pixel above it
and is never evaluated. Network Dissection keeps about the top 0.5 % of each unit's pixels, so a few
per cent of the cells are evaluated, against every pixel of every map upsampled in full.

Values are computed as two linear interpolations (``a + (b − a)·λ``), so a *flat* cell (four equal
corners, e.g. a constant image region) gives exactly its corner value, never a value a rounding
error above it; the selection marks the pixels of flat cells, whose values are raw activations.

>>> up = CellUpsampler((2, 2), (4, 4))
>>> maps = torch.tensor([[[[0., 1.], [0., 1.]]]])
>>> chunk = next(up.above(maps, torch.tensor([0.5])))
>>> sorted(chunk.pixels.tolist()), chunk.values.unique().tolist()    # columns sample 0, .25, .75, 1
([2, 3, 6, 7, 10, 11, 14, 15], [0.75, 1.0])
>>> sorted(chunk.pixels[chunk.flat].tolist())     # the right border column: corners all 1
[3, 7, 11, 15]
"""

from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F

# upsampled values evaluated at once (cells × pixels per cell); bounds the working memory per chunk
CHUNK_ELEMENTS = 1 << 22


class Selection(NamedTuple):
    """Upsampled pixels above their unit's floor.

    Per pixel: unit, image in the batch, pixel index (row·W + col), value, and whether the pixel lies in
    a flat cell (its value is then exactly an activation of the map).
    """

    units: torch.Tensor
    images: torch.Tensor
    pixels: torch.Tensor
    values: torch.Tensor
    flat: torch.Tensor


class _Axis(NamedTuple):
    """One axis of the upsampling, its output positions grouped by input neighbours.

    Group g (0..n_in) lies between input positions g − 1 and g (clamped to the map), so group 0 and
    group n_in are the borders where one input position is read; groups without output positions are empty.
    """

    positions: torch.Tensor  # (n_in + 1, S) output positions of each group, padded with 0
    weight: torch.Tensor     # (n_in + 1, S) float32 weight of the upper neighbour; NaN where padded


def _axis(n_in: int, n_out: int) -> _Axis:
    """PyTorch's source index and weights for ``align_corners=False``, computed in float32 as its kernel does."""
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out
    src = scale * (torch.arange(n_out, dtype=torch.float32) + 0.5) - 0.5
    clamped = src < 0
    src = src.clamp(min=0)
    i0 = src.long()                                   # ≤ n_in − 1: src stays below n_in − 1/2
    # group g reads inputs g − 1 and g of the map padded by one copy of its border: a clamped top position
    # lies in group 0, any other between inputs i0 and i0 + 1, the bottom border (i0 = n_in − 1) in group n_in.
    # In groups 0 and n_in both neighbours are the same input, which any weight gives exactly.
    group = torch.where(clamped, 0, i0 + 1)
    weight_upper = src - i0                           # in [0, 1) and exact (Sterbenz), so no clamping
    sizes = torch.bincount(group, minlength=n_in + 1)
    slot = torch.arange(n_out) - (sizes.cumsum(0) - sizes)[group]
    positions = torch.zeros(n_in + 1, max(1, int(sizes.max())), dtype=torch.long)
    # a padded position gets a NaN weight: its value is NaN, which no comparison selects
    weight = torch.full_like(positions, float("nan"), dtype=torch.float32)
    positions[group, slot] = torch.arange(n_out)
    weight[group, slot] = weight_upper
    return _Axis(positions, weight)


class CellUpsampler:
    """Upsample (B, K, h, w) maps to ``out_size`` bilinearly, yielding only the pixels above a per-unit floor.

    The values are those of ``F.interpolate(maps, out_size, mode="bilinear", align_corners=False)``
    (the same float32 source indices and weights; the products may round differently, within 1e-6).

    Args:
        in_size: (h, w) of the maps.
        out_size: (H, W) of the upsampled maps.
        device: where the index tables live.

    Examples:
        >>> up = CellUpsampler((1, 2), (1, 4))
        >>> sel = next(up.above(torch.tensor([[[[0., 1.]]]]), torch.tensor([0.5])))
        >>> sel.pixels.tolist(), sel.values.tolist()
        ([2, 3], [0.75, 1.0])
    """

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int], device: torch.device | str = "cpu"):
        self.in_size, self.out_size = tuple(in_size), tuple(out_size)
        rows, cols = _axis(in_size[0], out_size[0]), _axis(in_size[1], out_size[1])
        dev = torch.device(device)
        self.row_weight, self.col_weight = rows.weight.to(dev), cols.weight.to(dev)
        # flat output pixel of (cell group gy·(w+1) + gx, position i·S_cols + j)
        pixels = rows.positions[:, None, :, None] * out_size[1] + cols.positions[None, :, None, :]
        self.pixels = pixels.reshape(-1).to(dev)

    def above(self, maps: torch.Tensor, floors: torch.Tensor) -> Iterator[Selection]:
        """Chunks of the upsampled pixels of ``maps`` strictly above ``floors``.

        Args:
            maps: (B, K, h, w) maps of the ``in_size`` given.
            floors: (K,) per-unit floors.

        Yields:
            One :class:`Selection` per chunk of cells (bounded working memory).
        """
        b, k, h, w = maps.shape
        f = floors.to(maps.device, torch.float32)
        # the cell between input rows g − 1, g and columns e − 1, e (clamped) is window (g, e) of the padded map
        padded = F.pad(maps.float(), (1, 1, 1, 1), mode="replicate").contiguous()   # NCHW order for flat indices
        rows_max = torch.maximum(padded[:, :, :-1], padded[:, :, 1:])
        cell_max = torch.maximum(rows_max[..., :-1], rows_max[..., 1:])         # (B, K, h + 1, w + 1)
        cells = (cell_max > f[None, :, None, None]).reshape(-1).nonzero().squeeze(1)
        per_cell = self.row_weight.shape[1] * self.col_weight.shape[1]
        step = max(1, CHUNK_ELEMENTS // per_cell)
        for s in range(0, len(cells), step):
            yield self._evaluate(padded.view(-1), f, cells[s:s + step], (b, k, h, w))

    def _evaluate(self, padded: torch.Tensor, floors: torch.Tensor, cells: torch.Tensor, shape) -> Selection:
        """The pixels above the floor in the given cells (flat indices into the (B, K, h + 1, w + 1) cells)."""
        _, k, h, w = shape
        gx, rest = cells % (w + 1), cells // (w + 1)
        gy, plane = rest % (h + 1), rest // (h + 1)                            # plane = image·K + unit
        top_left = (plane * (h + 2) + gy) * (w + 2) + gx
        a00, a01 = padded.index_select(0, top_left)[:, None], padded.index_select(0, top_left + 1)[:, None]
        a10 = padded.index_select(0, top_left + w + 2)[:, None]
        a11 = padded.index_select(0, top_left + w + 3)[:, None]
        wx1 = self.col_weight.index_select(0, gx)                               # (n, S_cols)
        upper, lower = a00 + (a01 - a00) * wx1, a10 + (a11 - a10) * wx1
        values = upper[:, None, :] + (lower - upper)[:, None, :] * self.row_weight.index_select(0, gy)[:, :, None]
        unit = plane % k
        per_cell = values.shape[1] * values.shape[2]
        keep = (values.view(len(cells), per_cell) > floors.index_select(0, unit)[:, None]).view(-1)
        hit = keep.nonzero().squeeze(1)
        cell = hit // per_cell
        within = hit - cell * per_cell
        group = (gy * (w + 1) + gx).index_select(0, cell)
        flat = ((a00 == a01) & (a00 == a10) & (a00 == a11)).squeeze(1)
        return Selection(unit.index_select(0, cell), (plane // k).index_select(0, cell),
                         self.pixels.index_select(0, group * per_cell + within), values.view(-1).index_select(0, hit),
                         flat.index_select(0, cell))
