"""SAN sparse activations: peaks exact to the greedy definition, max-pool indices, max-activations."""

import pytest
import torch
import torch.nn.functional as F

from inspectnet.analysis.san.activations import (
    get_activation,
    max_activations,
    max_pool_indices,
    peaks,
    peaks_reference,
)
from inspectnet.core.errors import InspectnetError


@pytest.mark.parametrize("seed", range(12))
def test_peaks_equals_greedy_reference_on_random_maps(seed):
    g = torch.Generator().manual_seed(seed)
    d = 1 + seed % 4
    shape = (2, 3, 9, 12) if seed % 2 else (2, 3, 25)
    x = torch.randn(shape, generator=g)
    if seed % 3 == 0:
        x = x.mul(2).round()  # many ties and plateaus
    assert torch.equal(peaks(x, d), peaks_reference(x, d))


def test_peaks_greedy_differs_from_one_shot_window_maximum():
    # 9 at 0 suppresses 8 at 2 (d=3), after which 7 at 4 is kept: a one-shot window-max test drops it
    x = torch.tensor([[[9.0, 0, 8, 0, 7, 0, 0]]])
    one_shot = x * (x == F.max_pool1d(x, 5, 1, 2))
    assert peaks(x, 3).tolist() == [[[9.0, 0, 0, 0, 7, 0, 0]]]
    assert one_shot[0, 0, 4] == 0


def test_peaks_keeps_pairwise_distance_and_passes_gradient():
    x = torch.relu(torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))).requires_grad_()
    y = peaks(x, 3)
    idx = y[0, 0].nonzero()
    dist = (idx[:, None, :] - idx[None, :, :]).abs().amax(-1)
    assert (dist + 100 * torch.eye(len(idx), dtype=dist.dtype) >= 3).all()
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float())


def _max_pool_indices_reference(x, m):
    out = torch.zeros_like(x)
    B, C, H, W = x.shape
    for b in range(B):
        for c in range(C):
            for i in range(0, H, m):
                for j in range(0, W, m):
                    win = x[b, c, i:i + m, j:j + m]
                    r, q = divmod(int(win.abs().flatten().argmax()), win.shape[1])
                    out[b, c, i + r, j + q] = win[r, q]
    return out


def test_max_pool_indices_one_survivor_per_window_every_window():
    x = torch.randn(2, 3, 7, 10, generator=torch.Generator().manual_seed(0))
    y = max_pool_indices(x, 3)
    assert torch.equal(y, _max_pool_indices_reference(x, 3))
    assert int((y != 0).sum()) == 2 * 3 * 3 * 4  # ceil(7/3) * ceil(10/3) windows per map


def test_max_activations_top_k_per_map():
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    y = max_activations(x, 3)
    assert ((y != 0).flatten(2).sum(2) == 3).all()
    assert torch.equal(y.flatten(2).sort(2).values[..., -3:], x.flatten(2).sort(2).values[..., -3:])


def test_bad_arguments():
    with pytest.raises(InspectnetError, match="unknown sparse activation"):
        get_activation("relu6")
    with pytest.raises(InspectnetError, match="d=0"):
        peaks(torch.zeros(1, 1, 3), 0)
    with pytest.raises(InspectnetError, match="shape"):
        peaks(torch.zeros(3), 2)
