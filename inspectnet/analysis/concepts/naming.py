"""Names for discovered concepts: labelled concepts by mask IoU, classes by purity, and top images.

Mask names reuse the dissection counts (:class:`~inspectnet.analysis.dissect.counts.DissectionCounts`):
a concept's map (its code U_m over the cells) plays the part of a unit's map, is upsampled to the mask
size and kept above its top-q level over the dataset; IoU with each labelled concept is counted over
the whole dataset in the same pass. Several q are tried (a colour covers more of an image than a
coloured shape) and each concept keeps its best; random directions in the layer's channel space go
through the very same procedure, so the count of labelled concepts recovered (best IoU ≥ 0.5) has a
baseline that shares every choice but the directions.

>>> p = ClassPurity(num_concepts=1, num_classes=2)
>>> p.add(torch.tensor([[[[1.]]], [[[3.]]]]), np.array([0, 1]))
>>> p.summary(["a", "b"])[0]["classes"][0]
{'class': 'b', 'share': 0.75, 'image_share': 0.5}
"""

from collections.abc import Sequence

import numpy as np
import torch

from inspectnet.analysis.concepts import NAME_IOU, NAME_QUANTILES
from inspectnet.analysis.dissect.counts import DissectionCounts, best_images, no_images
from inspectnet.analysis.dissect.dissection import iou_from_counts


class TopImages:
    """Per concept, the ``k`` images where its code reaches its highest value (ties to the smaller index).

    Args:
        num_concepts: K, the discovered concepts.
        k: images kept per concept.

    Examples:
        >>> top = TopImages(num_concepts=1, k=2)
        >>> top.add(torch.tensor([[[[1.]]], [[[3.]]], [[[2.]]]]), torch.tensor([10, 11, 12]))
        >>> top.lists()
        [[11, 12]]
    """

    def __init__(self, num_concepts: int, k: int):
        self.k = k
        self.values, self.ids = no_images(num_concepts, "cpu")

    def add(self, codes: torch.Tensor, index: torch.Tensor) -> None:
        """Add one batch.

        Args:
            codes: (B, K, h, w) concept codes.
            index: (B,) dataset indices of the images.
        """
        peak = codes.flatten(2).amax(2).T                                       # (K, B)
        self.values, self.ids = best_images(torch.cat([self.values, peak], 1),
                                            torch.cat([self.ids, index[None].expand(len(peak), -1)], 1), self.k)

    def lists(self) -> list[list[int]]:
        """The top images so far.

        Returns:
            Per concept, its top images' dataset indices, best first.
        """
        return [row.tolist() for row in self.ids]


class ClassPurity:
    """Per concept, how its code mass (summed over the cells) falls on each labelled class.

    Args:
        num_concepts: K, the discovered concepts.
        num_classes: the labelled classes.

    Examples:
        >>> p = ClassPurity(num_concepts=1, num_classes=2)
        >>> p.add(torch.tensor([[[[1.]]], [[[3.]]]]), np.array([0, 1]))
        >>> p.summary(["a", "b"], top=1)
        [{'concept': 0, 'classes': [{'class': 'b', 'share': 0.75, 'image_share': 0.5}]}]
    """

    def __init__(self, num_concepts: int, num_classes: int):
        self.mass = np.zeros((num_concepts, num_classes))
        self.images = np.zeros(num_classes)

    def add(self, codes: torch.Tensor, labels: np.ndarray) -> None:
        """Add one batch.

        Args:
            codes: (B, K, h, w) concept codes.
            labels: (B,) class indices; −1 marks an unlabelled image, which is skipped.
        """
        keep = labels >= 0
        mass = codes.sum((2, 3)).double().numpy()[keep]                         # (B', K)
        np.add.at(self.mass.T, labels[keep], mass)
        np.add.at(self.images, labels[keep], 1)

    def summary(self, class_names: Sequence[str], top: int = 3) -> list[dict[str, object]]:
        """Per concept its ``top`` classes by share of its mass, with each class's share of the images.

        Args:
            class_names: the name of each class index.
            top: classes listed per concept.

        Returns:
            ``[{"concept": m, "classes": [{"class", "share", "image_share"}]}]``, one entry per concept.
        """
        out = []
        image_share = self.images / max(1.0, self.images.sum())
        for m, row in enumerate(self.mass):
            share = row / row.sum() if row.sum() > 0 else row
            order = np.argsort(-share, kind="stable")[:top]
            out.append({"concept": m, "classes": [{"class": class_names[c], "share": round(float(share[c]), 6),
                                                   "image_share": round(float(image_share[c]), 6)} for c in order]})
        return out


class MaskNames:
    """IoU of thresholded concept maps with labelled concept masks, at each of ``quantiles``.

    Several map families (the discovered concepts and random directions) are counted at once.

    Args:
        num_images: the images of the whole pass.
        mask_size: (H, W) of the concept masks.
        concepts: the labelled concepts' names.
        quantiles: the top fractions tried as a concept's mask.
    """

    def __init__(self, num_images: int, mask_size: tuple[int, int], concepts: Sequence[str],
                 quantiles: Sequence[float] = NAME_QUANTILES):
        self.concepts, self.quantiles = list(concepts), list(quantiles)
        self.counts = [DissectionCounts(num_images, mask_size, len(concepts), quantile=q, top_k=1)
                       for q in quantiles]

    def add(self, maps: dict[str, torch.Tensor], masks: torch.Tensor, index: torch.Tensor) -> None:
        """Add one batch.

        Args:
            maps: per family, the (B, K, h, w) maps.
            masks: the (B, concepts, H, W) bool labelled concept masks.
            index: the (B,) dataset indices of the images.
        """
        for counts in self.counts:
            counts.accumulate(maps, masks, index)

    def best(self) -> dict[str, dict[str, np.ndarray]]:
        """The best IoU of every map with every labelled concept, over the quantiles.

        Returns:
            Per family: ``{"iou": (K, concepts), "quantile": (K, concepts)}``, the best IoU over the quantiles
            and the quantile giving it.
        """
        out: dict[str, dict[str, np.ndarray]] = {}
        for q, counts in zip(self.quantiles, self.counts):
            overlaps = counts.overlaps(counts.thresholds())
            for family, (inter, area) in overlaps.items():
                iou = iou_from_counts(inter, area, counts.mask_area.cpu())
                if family not in out:
                    out[family] = {"iou": iou, "quantile": np.full(iou.shape, q)}
                    continue
                better = iou > out[family]["iou"]
                out[family]["iou"] = np.where(better, iou, out[family]["iou"])
                out[family]["quantile"] = np.where(better, q, out[family]["quantile"])
        return out


def recovered(iou: np.ndarray, threshold: float = NAME_IOU) -> list[int]:
    """Labelled concepts (columns) that some map (row) matches with IoU ≥ ``threshold``.

    Args:
        iou: (maps, labelled concepts) IoU.
        threshold: the IoU to reach.

    Returns:
        The column indices recovered.

    Examples:
        >>> recovered(np.array([[0.6, 0.1], [0.2, 0.4]]))
        [0]
    """
    return [int(c) for c in np.nonzero(iou.max(0) >= threshold)[0]] if iou.size else []


def names_from_iou(best: dict[str, np.ndarray], concepts: Sequence[str]) -> list[dict[str, object]]:
    """Per discovered concept its best labelled concept, that IoU and the quantile used.

    Args:
        best: ``{"iou": (K, concepts), "quantile": (K, concepts)}`` from :meth:`MaskNames.best`.
        concepts: the labelled concepts' names.

    Returns:
        ``[{"name", "iou", "quantile"}]`` per discovered concept.

    Examples:
        >>> names_from_iou({"iou": np.array([[0.1, 0.7]]), "quantile": np.array([[0.1, 0.05]])}, ["a", "b"])
        [{'name': 'b', 'iou': 0.7, 'quantile': 0.05}]
    """
    out = []
    for row, qrow in zip(best["iou"], best["quantile"]):
        c = int(np.argmax(row))
        out.append({"name": concepts[c], "iou": round(float(row[c]), 6), "quantile": float(qrow[c])})
    return out


def random_directions(channels: int, k: int, seed: int) -> torch.Tensor:
    """``k`` random unit directions in channel space (seeded Gaussian), the naming baseline.

    Args:
        channels: C, the layer's channel count.
        k: the directions drawn.
        seed: seeds the draw.

    Returns:
        The (k, C) unit directions.

    Examples:
        >>> random_directions(4, 2, 0).norm(dim=1).tolist()
        [1.0, 1.0]
    """
    r = torch.randn(k, channels, generator=torch.Generator().manual_seed(seed))
    return r / r.norm(dim=1, keepdim=True)


def recovery_summary(best: dict[str, dict[str, np.ndarray]], concepts: Sequence[str],
                     threshold: float = NAME_IOU) -> dict[str, object]:
    """Labelled concepts recovered by the discovered concepts against random directions.

    The discovered concepts (family ``concepts``) are compared with each draw of random directions
    (families ``random0``, ``random1``, ...), and the margin over the draws' mean is reported.

    Args:
        best: :meth:`MaskNames.best`.
        concepts: the labelled concepts' names.
        threshold: the IoU a labelled concept must reach.

    Returns:
        ``{"recovered": names, "random_recovered": count per draw, "margin": recovered − mean of the draws,
        "best_iou": per labelled concept, "random_best_iou": per labelled concept, mean over the draws, ...}``.

    Examples:
        >>> best = {"concepts": {"iou": np.array([[0.6, 0.1]])}, "random0": {"iou": np.array([[0.2, 0.1]])}}
        >>> recovery_summary(best, ["a", "b"])["margin"]
        1.0
    """
    draws = [name for name in best if name.startswith("random")]
    found = recovered(best["concepts"]["iou"], threshold)
    counts = [len(recovered(best[d]["iou"], threshold)) for d in draws]
    random_iou = np.mean([best[d]["iou"].max(0) for d in draws], axis=0) if draws else np.zeros(len(concepts))
    return {"iou_threshold": threshold, "labelled_concepts": len(concepts),
            "recovered": [concepts[c] for c in found], "random_recovered": counts,
            "margin": float(len(found) - np.mean(counts)) if counts else float(len(found)),
            "best_iou": [round(float(v), 6) for v in best["concepts"]["iou"].max(0)],
            "random_best_iou": [round(float(v), 6) for v in random_iou]}
