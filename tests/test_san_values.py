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


def _signals():
    g = torch.Generator().manual_seed(0)
    base = torch.zeros(32, 1, 12, 12)
    for n in range(32):  # sparse spikes: what a SAN's few kernels can rebuild
        idx = torch.randint(0, 144, (3,), generator=g)
        base[n, 0].view(-1)[idx] = torch.rand(3, generator=g) + 0.5
    return base


def test_san_training_lowers_the_l1_reconstruction_error_of_its_initialisation():
    from inspectnet.analysis.san.model import san_metrics, train_san

    x = _signals()
    untrained = train_san(x, "identity", 3, epochs=0, seed=1)  # the same seeded initialisation, no step
    trained = train_san(x, "identity", 3, epochs=10, batch_size=4, seed=1)  # 80 Adam steps
    before, after = san_metrics(untrained, x)["l_tilde"], san_metrics(trained, x)["l_tilde"]
    assert before > 1.0 and after < 0.2 * before


def test_san_metrics_relative_error_by_hand_on_a_faint_signal():
    from inspectnet.analysis.san.model import SAN, san_metrics

    model = SAN(1, 1, "identity")
    with torch.no_grad():
        model.weight.fill_(0.5)  # x̂ = 0.5 · 0.5 · x: a 1×1 kernel applied twice (code, then reconstruction)
    x = torch.full((2, 1, 2, 2), 0.01)  # ‖x‖₁ = 0.04 per sample, far below 1
    m = san_metrics(model, x)
    assert m["l_tilde"] == pytest.approx(0.75, rel=1e-6)  # ‖0.25x − x‖₁ / ‖x‖₁
    assert m["cr_inv"] == pytest.approx((1 + 3 * 4) / 4)  # (weights + (dim + 1)·A) / n, A = 4 non-zero codes


def test_san_kernels_start_from_n_0_0_1_and_a_size_of_one_is_accepted():
    from inspectnet.analysis.san.model import SAN

    torch.manual_seed(0)
    w = SAN(8, 5, "identity").weight.detach()
    assert 0.08 < float(w.std()) < 0.12 and abs(float(w.mean())) < 0.03  # 200 draws of N(0, 0.1²)
    assert SAN(2, 1, "identity").weight.shape == (2, 1, 1, 1)
    with pytest.raises(InspectnetError, match="odd and positive"):
        SAN(2, 0, "identity")


def test_san_table_lists_each_activation_at_its_selected_size_only():
    from inspectnet.analysis.san.model import SANResult

    rows = [{"activation": "identity", "size": s, "phi_bar": 0.3 + s / 100, "cr_inv": 0.5, "l_tilde": 0.1}
            for s in (3, 5)]
    table = SANResult(rows=rows, selected={"identity": 5}, kernels=2, train_samples=8, val_samples=2).table()
    assert "| identity | 5 |" in table and "| identity | 3 |" not in table


def test_san_command_defaults_are_the_library_defaults():
    import argparse
    import inspect

    from inspectnet.analysis.san.model import san_select, train_san
    from inspectnet.cli import san as san_cli

    sub = argparse.ArgumentParser().add_subparsers()
    san_cli.register(sub)
    args = sub.choices["san"].parse_args(["digits", "--out", "x"])
    select = inspect.signature(san_select).parameters
    train = inspect.signature(train_san).parameters
    assert list(select["sizes"].default) == args.kernel_sizes
    for name in ("kernels", "epochs", "lr", "k", "seed"):
        assert select[name].default == train[name].default == getattr(args, name), name
