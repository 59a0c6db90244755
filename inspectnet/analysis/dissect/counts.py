"""What one dissection pass accumulates, and how it is finalized.

Per layer: a tail sketch (thresholds and, in the one-pass method, the upsampled areas and concept
overlaps), the top images of each unit, and the concept areas.

The split serves sharded passes: each process calls :meth:`DissectionCounts.accumulate` on its own
batches (every count is a sum over images; the sketches are told the global number of images), then
:meth:`DissectionCounts.all_reduce` once (a no-op in one process), then any process finalizes with
:meth:`~DissectionCounts.thresholds` and :meth:`~DissectionCounts.overlaps`.

>>> import torch
>>> c = DissectionCounts(num_images=2, mask_size=(4, 4), num_concepts=1, quantile=0.5)   # threshold 0
>>> maps = {"conv": torch.tensor([[[[0., 1.], [0., 1.]]], [[[1., 0.], [1., 0.]]]])}
>>> masks = torch.zeros(2, 1, 4, 4, dtype=torch.bool); masks[:, :, :, 2:] = True   # right half
>>> c.accumulate(maps, masks, torch.arange(2))
>>> inter, area = c.overlaps(c.thresholds())["conv"]
>>> inter.tolist(), area.tolist(), c.mask_area.tolist()
([[12.0]], [24.0], [16])
"""

from collections.abc import Mapping

import torch

from inspectnet.analysis.dissect.tail import CONCEPT_GROUP, TailSketch
from inspectnet.analysis.dissect.upsample import CellUpsampler
from inspectnet.core.distributed import all_gather, all_reduce, share_from_main, world
from inspectnet.core.errors import InspectnetError

# one-pass concept counts of one layer above this size are refused in favour of the two-pass method
MAX_CONCEPT_COUNT_BYTES = 1 << 30
# a batch's maps and masks wait (the latest batches up to this size) before their upsampled pixels are
# counted, so the floors have risen with the batches after them: a few times fewer pixels above the floors
# to count, memory still independent of the data size
HOLD_BYTES = 64 << 20


class DissectionCounts:
    """Accumulated counts of a dissection pass over ``num_images`` images (all shards together).

    With ``overlaps=False`` only thresholds and top images are kept (the first of two passes).

    Args:
        num_images: the images of the whole pass (every shard together).
        mask_size: (H, W) of the concept masks.
        num_concepts: C.
        quantile: the top fraction of each unit's activations kept.
        bins: fine bins per unit of the tail sketches.
        top_k: top images kept per unit.
        overlaps: keep the upsampled areas and concept overlaps (the one-pass method).
        device: where the counts live.
    """

    def __init__(self, num_images: int, mask_size: tuple[int, int], num_concepts: int, *, quantile: float,
                 bins: int = 4096, top_k: int = 8, overlaps: bool = True, device: torch.device | str = "cpu"):
        self.num_images, self.mask_size, self.num_concepts = num_images, tuple(mask_size), num_concepts
        self.quantile, self.bins, self.top_k, self.with_overlaps = quantile, bins, top_k, overlaps
        self.device = torch.device(device)
        self.sketches: dict[str, TailSketch] = {}
        self.upsamplers: dict[str, CellUpsampler] = {}
        self.tops: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.map_sizes: dict[str, list[int]] = {}
        self.mask_area = torch.zeros(num_concepts, dtype=torch.int64, device=self.device)
        self._held: list[tuple[dict[str, torch.Tensor], torch.Tensor, int]] = []
        self._held_bytes = 0

    def accumulate(self, maps: Mapping[str, torch.Tensor], masks: torch.Tensor, index: torch.Tensor) -> None:
        """Add one batch.

        Args:
            maps: per layer, the (B, K, h, w) float maps.
            masks: the (B, C, H, W) bool concept masks.
            index: the (B,) dataset indices of the images (for the top images).
        """
        self.mask_area += masks.flatten(2).sum(dim=(0, 2))
        for name, a in maps.items():
            units = a.shape[1]
            self._sketch(name, a).update(a.transpose(0, 1).reshape(units, -1))
            self._keep_top(name, a, index)
        if not self.with_overlaps:
            return
        self._held.append((dict(maps), masks, _size(maps, masks)))
        self._held_bytes += self._held[-1][2]
        while self._held_bytes > HOLD_BYTES:
            self._count_oldest()

    def _count_oldest(self) -> None:
        maps, masks, size = self._held.pop(0)
        self._held_bytes -= size
        self._count_upsampled(maps, masks)

    def _flush(self) -> None:
        while self._held:
            self._count_oldest()

    def _count_upsampled(self, maps: Mapping[str, torch.Tensor], masks: torch.Tensor) -> None:
        """Add the upsampled pixels of one batch above the current floors to the sketches."""
        pixels = self.mask_size[0] * self.mask_size[1]
        flat = masks.flatten(2)
        table = flat.transpose(1, 2).reshape(-1, self.num_concepts)
        has_concept = flat.any(dim=1).reshape(-1)
        for name, a in maps.items():
            sketch = self.sketches[name]
            if table.dtype != sketch.inside.dtype:
                table = table.to(sketch.inside.dtype)
            for sel in self.upsamplers[name].above(a, sketch.gate):
                sketch.add_upsampled(sel.units, sel.values, sel.flat, sel.images * pixels + sel.pixels, table,
                                     has_concept)

    def _sketch(self, name: str, a: torch.Tensor) -> TailSketch:
        if name not in self.sketches:
            self._add_layer(name, *a.shape[1:])
        return self.sketches[name]

    def _add_layer(self, name: str, units: int, h: int, w: int) -> None:
        concepts = self.num_concepts if self.with_overlaps else 0
        need = units * concepts * (self.bins // CONCEPT_GROUP) * 2 * 4  # int32 counts, two kinds
        if need > MAX_CONCEPT_COUNT_BYTES:
            raise InspectnetError(f"layer {name!r}: one-pass concept counts of {units} units × {concepts} concepts "
                                  f"would take {need / 2 ** 30:.1f} GiB; dissect it with passes=2 (--passes 2)")
        self.sketches[name] = TailSketch(units, self.num_images * h * w, self.quantile, concepts=concepts,
                                         upsampled_total=self.num_images * self.mask_size[0] * self.mask_size[1],
                                         bins=self.bins, device=self.device)
        self.upsamplers[name] = CellUpsampler((h, w), self.mask_size, self.device)
        self.tops[name] = no_images(units, self.device)
        self.map_sizes[name] = [h, w]

    def _keep_top(self, name: str, a: torch.Tensor, index: torch.Tensor) -> None:
        values, ids = self.tops[name]
        units = a.shape[1]
        values = torch.cat([values, a.amax(dim=(2, 3)).T], dim=1)
        ids = torch.cat([ids, index.to(ids.device)[None].expand(units, -1)], dim=1)
        self.tops[name] = best_images(values, ids, self.top_k)

    def all_reduce(self) -> None:
        """Combine the counts of every ``torch.distributed`` rank (default group) into each.

        A no-op in one process. A rank that had no batch learns the layers' shapes from rank 0, which has the first.
        """
        self._flush()
        if world()[0] == 1:
            return
        shapes = share_from_main({k: [s.units, *self.map_sizes[k]] for k, s in self.sketches.items()})
        for name, (units, h, w) in shapes.items():
            if name not in self.sketches:
                self._add_layer(name, units, h, w)
            self.sketches[name].all_reduce()
            vals, ids = padded_top(self.tops[name], self.top_k)
            self.tops[name] = best_images(torch.cat(all_gather(vals), dim=1), torch.cat(all_gather(ids), dim=1),
                                          self.top_k)
        all_reduce(self.mask_area)

    def thresholds(self) -> dict[str, torch.Tensor]:
        """Per layer, each unit's top-``quantile`` activation level (float64).

        Returns:
            Layer -> (K,) thresholds.
        """
        self._flush()
        return {name: s.threshold() for name, s in self.sketches.items()}

    def overlaps(self, thresholds: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, |S_k ∩ L_c| and |S_k| above the given thresholds, from the one-pass counts.

        Args:
            thresholds: layer -> (K,) thresholds (see :meth:`thresholds`).

        Returns:
            Layer -> ``(intersections (K, C), areas (K,))``.
        """
        self._flush()
        return {name: s.overlaps(thresholds[name]) for name, s in self.sketches.items()}


def _size(maps: Mapping[str, torch.Tensor], masks: torch.Tensor) -> int:
    return sum(a.numel() * a.element_size() for a in maps.values()) + masks.numel() * masks.element_size()


def no_images(units: int, dev: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty top-images pair (values, image ids) of ``units`` units.

    Args:
        units: K.
        dev: the device of the tensors.

    Returns:
        ``(values (K, 0), image ids (K, 0))``.
    """
    return (torch.full((units, 0), float("-inf"), device=dev), torch.zeros((units, 0), dtype=torch.long, device=dev))


def padded_top(top: tuple[torch.Tensor, torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A top-images pair padded to ``k`` columns with (-inf, -1), the same shape on every rank.

    Args:
        top: ``(values (K, n), image ids (K, n))`` with n <= k.
        k: the columns.

    Returns:
        The padded pair.
    """
    vals, ids = top
    missing = k - vals.shape[1]
    return (torch.nn.functional.pad(vals, (0, missing), value=float("-inf")),
            torch.nn.functional.pad(ids, (0, missing), value=-1))


def best_images(vals: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit, the ``k`` images with the largest value, ties to the smaller index (padding dropped).

    The order is total, so the result does not depend on how the images were batched or shared out.

    Args:
        vals: (K, n) values.
        ids: (K, n) image ids.
        k: images kept per unit.

    Returns:
        ``(values (K, k), image ids (K, k))``.

    Examples:
        >>> best_images(torch.tensor([[1., 3., 3., 0.]]), torch.tensor([[5, 9, 2, 7]]), 2)
        (tensor([[3., 3.]]), tensor([[2, 9]]))
    """
    by_id = torch.argsort(ids, dim=1, stable=True)
    vals, ids = vals.gather(1, by_id), ids.gather(1, by_id)
    order = torch.argsort(vals, dim=1, descending=True, stable=True)
    real = int((ids[0] >= 0).sum()) if ids.shape[0] else 0
    keep = order[:, :min(k, real)]
    return vals.gather(1, keep), ids.gather(1, keep)
