"""Sparse activations at their edges, by hand: a window or k of one, zero refused, one-dimensional windows."""

import numpy as np
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


def test_default_window_and_peak_distance_are_two():
    from inspectnet.analysis.san.activations import get_activation

    x = torch.tensor([[[1.0, 3.0, 2.0, 0.5, 4.0]]])
    assert get_activation("max-pool-indices")(x).tolist() == [[[0.0, 3.0, 2.0, 0.0, 4.0]]]  # windows of two
    spikes = torch.tensor([[[0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 0.0]]])  # peaks three apart: both kept at d = 2, one at 3
    assert get_activation("peaks")(spikes).tolist() == [[[0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 0.0]]]
    assert get_activation("peaks", d=3)(spikes).tolist() == [[[0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0]]]


def test_san_max_activations_keep_the_papers_k_by_default():
    from inspectnet.analysis.san.activations import max_activations, paper_k
    from inspectnet.analysis.san.model import SAN

    s = torch.rand(1, 1, 9, 9, generator=torch.Generator().manual_seed(0))
    kept = SAN(1, 3, "max-activations").phi(s)
    assert torch.equal(kept, max_activations(s, paper_k((1, 1, 9, 9), 3))) and int((kept != 0).sum()) == 9


def test_san_training_takes_batches_of_64_by_default():
    from inspectnet.analysis.san.model import train_san

    x = _signals().repeat(3, 1, 1, 1)[:65]  # 65 samples: two steps per epoch at 64, one at 65
    default = train_san(x, "identity", 3, epochs=1, seed=2).weight
    assert torch.equal(default, train_san(x, "identity", 3, epochs=1, batch_size=64, seed=2).weight)
    assert not torch.equal(default, train_san(x, "identity", 3, epochs=1, batch_size=65, seed=2).weight)


@pytest.mark.parametrize("train, val, refused", [(0, 2, True), (2, 0, True), (1, 1, False)])
def test_san_selection_needs_one_training_and_one_validation_sample(train, val, refused):
    from inspectnet.analysis.san.model import san_select

    x = _signals()
    call = lambda: san_select(x[:train], x[:val], ["identity"], [1], epochs=0)  # noqa: E731
    if refused:
        with pytest.raises(InspectnetError, match="at least one training and one validation sample"):
            call()
    else:
        assert call().val_samples == 1


def test_kernel_picture_shows_each_selected_kernel_averaged_over_its_channels(tmp_path):
    from inspectnet.analysis.san.model import kernel_panels, san_select, save_kernel_picture

    x = torch.rand(4, 2, 6, 6, generator=torch.Generator().manual_seed(0))  # two channels: the mean is visible
    result = san_select(x, x, ["identity"], [3], kernels=2, epochs=0)
    panels = kernel_panels(result)
    w = result._models["identity"].weight.detach()
    assert [(a, m) for a, m, _ in panels] == [("identity", 3)]
    for c, image in enumerate(panels[0][2]):
        np.testing.assert_array_equal(image, ((w[c, 0] + w[c, 1]) / 2).numpy())
    assert save_kernel_picture(result, tmp_path / "k.png").stat().st_size > 500  # one activation: a single row


def test_grey_images_are_the_pixels_over_255_and_unequal_sizes_are_refused(tmp_path):
    from PIL import Image

    from inspectnet.analysis.san.model import images_tensor
    from inspectnet.data import load_data

    digits = load_data("digits")
    x = images_tensor(digits)
    assert x.shape == (len(digits), 1, 8, 8)
    want = np.asarray(digits.image(5).convert("L"), dtype=np.float32) / 255.0
    np.testing.assert_array_equal(x[5, 0].numpy(), want)
    assert float(x.max()) == 1.0
    for name, size in (("a", (8, 8)), ("b", (8, 8)), ("c", (6, 8))):
        (tmp_path / "k").mkdir(exist_ok=True)
        Image.new("L", size, 200).save(tmp_path / "k" / f"{name}.png")
    with pytest.raises(InspectnetError, match="images differ in size"):
        images_tensor(load_data(str(tmp_path)))


def test_layer_maps_are_the_first_channels_of_each_image_scaled_to_max_one():
    from inspectnet.analysis.san.model import layer_maps
    from inspectnet.data import load_data
    from inspectnet.models.zoo import load_model

    zm = load_model("resnet18", num_classes=2, input_size=32, seed=0)
    data = load_data("shapes?n=3", zm.transform())
    got = layer_maps(zm, data, "layer1", limit=2, channels=3)
    caught = []
    handle = zm.model.layer1.register_forward_hook(lambda _m, _i, out: caught.append(out.detach()))
    with torch.no_grad():
        zm.model(torch.stack([data[i][0] for i in range(2)]))
    handle.remove()
    maps = caught[0][:, :3].reshape(6, 1, 8, 8)
    want = maps / maps.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(got, want)
    assert layer_maps(zm, data, "layer1", channels=1).shape == (3, 1, 8, 8)  # every image without a limit
    with pytest.raises(InspectnetError, match="SAN needs .B, C, H, W. maps"):
        layer_maps(zm, data, "global_pool")
