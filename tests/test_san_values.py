"""Sparse activations at their edges, by hand: a window or k of one, zero refused, one-dimensional windows."""

import pytest
import torch

from inspectnet.analysis.san.activations import max_activations, max_pool_indices, paper_k, peaks
from inspectnet.core.errors import InspectnetError


def test_one_dimensional_windows_keep_the_largest_magnitude_of_each():
    x = torch.tensor([[[1.0, -4, 2, 3, 0, -0.5, 6]]])
    assert max_pool_indices(x, 3).tolist() == [[[0.0, -4.0, 0.0, 3.0, 0.0, 0.0, 6.0]]]  # windows of 3 and a last of 1
    assert max_pool_indices(x, 2).tolist() == [[[0.0, -4.0, 0.0, 3.0, 0.0, -0.5, 6.0]]]


def test_a_window_or_k_of_one():
    x = torch.tensor([[[1.0, -4, 2, 3]]])
    assert torch.equal(max_pool_indices(x, 1), x)                      # every entry is its own window
    assert max_activations(x, 1).tolist() == [[[0.0, 0.0, 0.0, 3.0]]]
    assert paper_k((2, 1, 5), 1) == 5 and paper_k((2, 1, 3, 4), 1) == 12


@pytest.mark.parametrize("call", [lambda x: max_pool_indices(x, 0), lambda x: max_activations(x, 0),
                                  lambda x: paper_k(tuple(x.shape), 0)])
def test_zero_window_or_k_is_refused(call):
    with pytest.raises(InspectnetError, match="must be at least 1"):
        call(torch.ones(1, 1, 4))


def test_the_shortest_map_with_a_peak_has_three_entries():
    assert peaks(torch.tensor([[[0.0, 2.0, 1.0]]]), 1).tolist() == [[[0.0, 2.0, 0.0]]]
    assert peaks(torch.tensor([[[0.0, 2.0]]]), 1).tolist() == [[[0.0, 0.0]]]       # no two-sided derivative
    image = torch.zeros(1, 1, 3, 3)
    image[0, 0, 1, 1] = 5.0
    assert torch.equal(peaks(image, 1), image)
