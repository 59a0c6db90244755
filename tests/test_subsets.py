"""One subset sampler for the audit (evenly spread), compare (seeded random) and export (calibration)."""

import numpy as np
import pytest
import torch

from inspectnet.core.errors import InspectnetError
from inspectnet.data import ArrayDataset, load_data
from inspectnet.data.subsets import calibration_arrays, random_subset, spread_indices, spread_subset


def class_sorted(n_per_class=10, classes=10):
    """A dataset ordered by class, as an image folder is: the first samples are all class 0."""
    images = (np.arange(n_per_class * classes) % 256).astype(np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    labels = np.repeat(np.arange(classes), n_per_class)
    return ArrayDataset("sorted", images, labels, [f"c{c}" for c in range(classes)])


def test_spread_subset_keeps_every_class_of_class_sorted_data():
    ds = class_sorted()
    sub = spread_subset(ds, 30)
    assert len(sub) == 30 and set(sub.labels.tolist()) == set(range(10))
    assert set(ds.labels[:30].tolist()) == {0, 1, 2}  # what "the first N" would have given
    assert sub.name(0) == ds.name(0) and sub.spec == "sorted?spread=30"
    np.testing.assert_array_equal(np.asarray(sub.image(29)), np.asarray(ds.image(len(ds) - 1)))
    assert spread_subset(ds, None) is ds and spread_subset(ds, 100) is ds
    with pytest.raises(InspectnetError, match="--limit must be at least 1"):
        spread_subset(ds, 0)


def test_spread_indices_are_distinct_and_span_the_range():
    assert spread_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert spread_indices(5, 50).tolist() == [0, 1, 2, 3, 4]
    idx = spread_indices(1000, 37)
    assert len(idx) == 37 and idx[0] == 0 and idx[-1] == 999 and (np.diff(idx) > 0).all()


def test_random_subset_is_seeded_and_views_the_base():
    full = load_data("digits:test")
    a, b = random_subset(full, 60, seed=0), random_subset(full, 60, seed=0)
    assert len(a) == 60 and a.labels.tolist() == b.labels.tolist()
    assert a.labels.tolist() != random_subset(full, 60, seed=1).labels.tolist()
    assert len(set(a.labels.tolist())) >= 8
    i = int(a.indices[5])
    assert a.labels[5] == full.labels[i] and a.image(5).tobytes() == full.image(i).tobytes()
    assert random_subset(full, None) is full and "sample(n=60,seed=0)" in a.spec
    with pytest.raises(InspectnetError, match="at least 1"):
        random_subset(full, 0)


def test_calibration_arrays_stack_the_spread_subset():
    ds = class_sorted()
    ds.transform = lambda im: torch.from_numpy(np.asarray(im, np.float32))[None]
    x, y = calibration_arrays(ds, 20)
    sub = spread_subset(ds, 20)
    assert x.shape == (20, 1, 4, 4) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(y, sub.labels)
    np.testing.assert_array_equal(x[7], sub[7][0].numpy())
    assert len(calibration_arrays(ds, None)[0]) == 100
    with pytest.raises(InspectnetError, match="holds no images"):
        calibration_arrays(ArrayDataset("empty", np.zeros((0, 4, 4), np.uint8), np.zeros(0, np.int64), ["a"]), 4)
