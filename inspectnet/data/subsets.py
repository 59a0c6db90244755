"""Subsets of a dataset: evenly spread, seeded random, stacked calibration batches, and shuffled labels.

Image folders are ordered by class (one sub-folder after another), so "the first N samples" of a
folder hold one or two classes (built-in sources are already shuffled, see
:mod:`inspectnet.data.sources`). Every place that works on part of a dataset takes it from here:

* :func:`spread_subset`: N samples at evenly spaced indices (the audit's ``--limit``): on
  class-sorted data every class with at least ``len/N`` samples is kept, and the choice is the same
  on every run;
* :func:`random_subset`: N samples drawn without replacement with a seed (``compare``'s budgets);
* :func:`calibration_arrays`: an evenly spread subset stacked into model inputs and labels
  (static int8 calibration and its evaluation in ``export``);
* :func:`shuffle_labels`: every sample with its labels permuted (the data-randomisation sanity check).

>>> from inspectnet.data import ArrayDataset
>>> ds = ArrayDataset("sorted", np.zeros((100, 8, 8), np.uint8), np.repeat(np.arange(10), 10), list("abcdefghij"))
>>> ds.labels[:10].tolist(), sorted(set(spread_subset(ds, 10).labels.tolist()))
([0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
>>> random_subset(ds, 50, seed=0).spec
'sorted|sample(n=50,seed=0)'
"""

import numpy as np
import torch

from inspectnet.core.errors import InspectnetError
from inspectnet.data.datasets import ImageDataset


class SubsetDataset(ImageDataset):
    """The samples of ``base`` at ``indices``, in that order (a view: images are read from ``base``).

    Args:
        base: the dataset.
        indices: the samples of ``base`` to keep, in order.
        spec: the spec that names the subset.
    """

    def __init__(self, base: ImageDataset, indices: np.ndarray, spec: str):
        super().__init__(base.transform)
        self.base, self.indices, self.spec = base, np.asarray(indices, dtype=np.int64), spec
        self.labels = np.asarray(base.labels)[self.indices]
        self.class_names = list(base.class_names)
        self.label_mapping, self.label_set = base.label_mapping, base.label_set
        self.skipped = list(base.skipped)

    def image(self, index: int):
        """The picture of sample ``index``, read from the base dataset.

        Args:
            index: the sample of the subset.

        Returns:
            The PIL image.
        """
        return self.base.image(int(self.indices[index]))

    def object_mask(self, index: int) -> np.ndarray | None:
        """The object mask of sample ``index`` in the base dataset.

        Args:
            index: the sample of the subset.

        Returns:
            The (H, W) bool mask, or None.
        """
        return self.base.object_mask(int(self.indices[index]))

    def name(self, index: int) -> str:
        """The identifier of sample ``index`` in the base dataset.

        Args:
            index: the sample of the subset.

        Returns:
            The identifier.
        """
        return self.base.name(int(self.indices[index]))

    def source_folder(self):
        """The base dataset's image folder.

        Returns:
            The folder, or None for built-in sources.
        """
        return self.base.source_folder()

    def origins(self) -> list[str] | None:
        """The base dataset's origins of the chosen samples (see :meth:`ImageDataset.origins`).

        Returns:
            One photo name per sample, or None.
        """
        base = self.base.origins()
        return None if base is None else [base[i] for i in self.indices]

    def nested(self) -> list[bool] | None:
        """The base dataset's nested-file flags of the chosen samples (see :meth:`ImageDataset.nested`).

        Returns:
            One flag per sample, or None.
        """
        base = self.base.nested()
        return None if base is None else [base[i] for i in self.indices]


def spread_indices(size: int, n: int) -> np.ndarray:
    """``min(n, size)`` distinct indices of ``range(size)`` at evenly spaced positions, first and last included.

    Args:
        size: the number of samples.
        n: how many to pick.

    Returns:
        The indices, ascending.

    Examples:
        >>> spread_indices(10, 4).tolist()
        [0, 3, 6, 9]
    """
    _check_count(n)
    return np.unique(np.linspace(0, size - 1, min(n, size)).round().astype(np.int64))


def spread_subset(ds: ImageDataset, n: int | None) -> ImageDataset:
    """``n`` evenly spread samples of ``ds`` (see :func:`spread_indices`).

    Args:
        ds: the dataset.
        n: how many samples; None keeps all.

    Returns:
        The subset; ``ds`` itself when ``n`` is None or covers it.
    """
    if n is not None:
        _check_count(n)
    if n is None or n >= len(ds):
        return ds
    idx = spread_indices(len(ds), n)
    return SubsetDataset(ds, idx, f"{ds.spec}?spread={len(idx)}")


def random_subset(ds: ImageDataset, n: int | None, seed: int = 0) -> ImageDataset:
    """``n`` samples of ``ds`` drawn without replacement (seeded), in random order.

    Args:
        ds: the dataset.
        n: how many samples; None keeps all.
        seed: the random seed.

    Returns:
        The subset; ``ds`` itself when ``n`` is None or covers it.
    """
    if n is not None:
        _check_count(n)
    if n is None or n >= len(ds):
        return ds
    idx = np.random.default_rng(seed).permutation(len(ds))[:n]
    return SubsetDataset(ds, idx, f"{ds.spec}|sample(n={n},seed={seed})")


def shuffle_labels(ds: ImageDataset, seed: int = 0) -> ImageDataset:
    """The same images with their labels permuted (seeded).

    This is the data of the data-randomisation sanity check (Adebayo et al. 2018), where no image's label
    can be learnt from the image.

    Args:
        ds: a labelled dataset.
        seed: the random seed.

    Returns:
        A copy with permuted labels.

    Raises:
        InspectnetError: the data is unlabelled.

    Examples:
        >>> from inspectnet.data.datasets import ArrayDataset
        >>> ds = ArrayDataset("d", np.zeros((6, 2, 2), np.uint8), [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
        >>> sorted(shuffle_labels(ds).labels.tolist()) == ds.labels.tolist()
        True
    """
    if not ds.labelled:
        raise InspectnetError(f"data {ds.spec!r} is unlabelled; shuffling labels needs labelled data")
    clone = ds.with_transform(ds.transform)
    clone.labels = np.random.default_rng(seed).permutation(np.asarray(ds.labels))
    clone.spec = f"{ds.spec}|shuffled_labels(seed={seed})"
    return clone


def calibration_arrays(ds: ImageDataset, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and labels of ``n`` evenly spread samples, transformed by ``ds``'s transform.

    Args:
        ds: the dataset (its transform makes the model inputs).
        n: how many samples; None takes all.

    Returns:
        ``(inputs (N, C, H, W) float32, labels (N,) with -1 = unlabelled)``.

    Raises:
        InspectnetError: the data holds no images.
    """
    if len(ds) == 0:
        raise InspectnetError(f"data {ds.spec!r} holds no images to calibrate on")
    sub = spread_subset(ds, n)
    xs, ys = zip(*(sub[i] for i in range(len(sub))))
    return torch.stack(list(xs)).numpy().astype(np.float32), np.asarray(ys, np.int64)


def _check_count(n: int) -> None:
    if n < 1:
        raise InspectnetError(f"--limit must be at least 1, got {n}")
