"""SAN sparse activations: peaks equal to the paper's Algorithm 4, max-pool indices, max-activations."""

import pytest
import torch
import torch.nn.functional as F

from inspectnet.analysis.san.activations import (
    get_activation,
    max_activations,
    max_pool_indices,
    paper_k,
    peaks,
    peaks_algorithm4,
)
from inspectnet.core.errors import InspectnetError


def test_peaks_equals_algorithm4_on_600_one_dimensional_maps():
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(6, 100, 40, generator=g))  # 600 ReLU'd signals, as SAN feeds φ
    for mpd in (1, 3):
        assert torch.equal(peaks(x, mpd), peaks_algorithm4(x, mpd))


@pytest.mark.parametrize("seed", range(8))
def test_peaks_equals_algorithm4_on_images_with_ties_and_plateaus(seed):
    g = torch.Generator().manual_seed(seed)
    mpd = 1 + seed % 4
    x = torch.randn(2, 3, 9, 12, generator=g)
    if seed % 2 == 0:
        x = x.mul(2).round()  # many ties and plateaus
    assert torch.equal(peaks(x, mpd), peaks_algorithm4(x, mpd))


def test_peaks_hand_computed_cases_of_algorithm4():
    one = [0.0, 3, 1, 2, 0, 5, 4]
    assert peaks(torch.tensor([[one]]), 1).tolist() == [[[0.0, 3, 0, 2, 0, 5, 0]]]
    # distance exactly mpd suppresses (p ≥ p_i − mpd ∧ p ≤ p_i + mpd), and the edge 4 is no peak
    assert peaks(torch.tensor([[one]]), 2).tolist() == [[[0.0, 3, 0, 0, 0, 5, 0]]]
    assert peaks(torch.tensor([[[0.0, 5, 0, 4, 0]]]), 2).tolist() == [[[0.0, 5, 0, 0, 0]]]
    assert peaks(torch.tensor([[[0.0, 5, 0, 4, 0]]]), 1).tolist() == [[[0.0, 5, 0, 4, 0]]]
    # neither the first nor the last entry has a zero crossing of the derivative; plateaus have none
    assert peaks(torch.tensor([[[5.0, 0, 0, 3, 0, 0, 6]]]), 1).tolist() == [[[0.0, 0, 0, 3, 0, 0, 0]]]
    assert peaks(torch.tensor([[[0.0, 2, 2, 0]]]), 1).tolist() == [[[0.0, 0, 0, 0]]]
    # images: a candidate rises and falls along both axes; (0, 2) sits on the border
    img = torch.zeros(1, 1, 4, 4)
    img[0, 0, 1, 1], img[0, 0, 2, 2], img[0, 0, 0, 2] = 4.0, 3.0, 9.0
    assert peaks(img, 1).nonzero()[:, 2:].tolist() == [[1, 1]]
    assert peaks_algorithm4(img, 1).nonzero()[:, 2:].tolist() == [[1, 1]]


def test_peaks_greedy_differs_from_one_shot_window_maximum():
    # 9 at 1 suppresses 8 at 3 (mpd 2), after which 7 at 5 is kept: a one-shot window-max test drops it
    x = torch.tensor([[[0.0, 9, 0, 8, 0, 7, 0]]])
    one_shot = x * (x == F.max_pool1d(x, 5, 1, 2))
    assert peaks(x, 2).tolist() == [[[0.0, 9, 0, 0, 0, 7, 0]]]
    assert one_shot[0, 0, 5] == 0


def test_peaks_keeps_pairwise_distance_and_passes_gradient():
    x = torch.relu(torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))).requires_grad_()
    y = peaks(x, 3)
    idx = y[0, 0].nonzero()
    dist = (idx[:, None, :] - idx[None, :, :]).abs().amax(-1)
    assert len(idx) > 1 and (dist + 100 * torch.eye(len(idx), dtype=dist.dtype) > 3).all()
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


def test_max_activations_paper_k_is_floor_n_over_m_to_the_dim():
    assert paper_k((4, 2, 28, 28), 3) == 9 ** 2 and paper_k((4, 2, 28, 28), 7) == 16
    assert paper_k((4, 2, 100), 7) == 14 and paper_k((1, 1, 5, 5), 7) == 1
    phi = get_activation("max-activations", m=5)  # k = 0: the paper's rule from the map size
    y = phi(torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(0)))
    assert ((y != 0).flatten(2).sum(2) == 25).all()
    # at equal m, about as many survivors as max-pool indices (one per window: ⌈28/5⌉² = 36)
    assert int((max_pool_indices(torch.rand(1, 1, 28, 28) + 0.1, 5) != 0).sum()) == 36


def test_max_activations_top_k_per_map():
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    y = max_activations(x, 3)
    assert ((y != 0).flatten(2).sum(2) == 3).all()
    assert torch.equal(y.flatten(2).sort(2).values[..., -3:], x.flatten(2).sort(2).values[..., -3:])


def test_bad_arguments():
    with pytest.raises(InspectnetError, match="unknown sparse activation"):
        get_activation("relu6")
    with pytest.raises(InspectnetError, match="mpd=0"):
        peaks(torch.zeros(1, 1, 3), 0)
    with pytest.raises(InspectnetError, match="shape"):
        peaks(torch.zeros(3), 2)
