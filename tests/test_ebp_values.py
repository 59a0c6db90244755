"""Elite BackProp's terms on hand-computed cases: A_ij as the spatial mean of |F| (also of a flat output), the
ridge term on the next weighted layer, λ, the appendix variant where a class has no evidence, elites and their count."""

import pytest
import torch
from torch import nn

from inspectnet.core.errors import InspectnetError
from inspectnet.plugins import make_plugin


def _spatial(values):
    """(B, C, 2, 2) maps whose |·| means are ``values``: each map holds v, -v, 3v, -3v (mean |·| = 2v)."""
    v = torch.tensor(values, dtype=torch.float32)[:, :, None] / 2
    return torch.stack([v, -v, 3 * v, -3 * v], dim=-1).reshape(*v.shape[:2], 2, 2)


def test_activation_is_the_spatial_mean_of_magnitudes_and_lambda_scales_the_penalty():
    model = nn.Sequential(nn.Identity())
    plugin = make_plugin("ebp:K=1,lam=0.5,layer=0").attach(model, num_classes=2)
    x = _spatial([[1.0, 2.0, 4.0], [3.0, 0.0, 1.0]])
    model(x)
    terms = plugin.loss(x, torch.tensor([1, 1]), None)
    # A = rows (1, 2, 4), (3, 0, 1); D1 = (4, 2, 5): elite {2}, D_(1) = 5, weights (4/5, 2/5, 0)
    assert torch.allclose(plugin.D, torch.tensor([[0.0, 0, 0], [4, 2, 5]], dtype=torch.float64))
    reg = ((4 / 5 * 1 + 2 / 5 * 2) + (4 / 5 * 3 + 0)) / 2
    assert terms["ebp"].item() == pytest.approx(0.5 * reg, rel=1e-6)
    assert "ebp_ridge" not in terms


def test_flat_outputs_are_used_as_they_are_and_accumulate_over_batches():
    model = nn.Sequential(nn.Identity())
    plugin = make_plugin("ebp:K=2,lam=1.0,layer=0").attach(model, num_classes=1)
    for x in (torch.tensor([[1.0, -2.0, 3.0]]), torch.tensor([[-1.0, 0.0, 1.0]])):
        model(x)
        plugin.loss(x, torch.tensor([0]), None)
    assert plugin.D.tolist() == [[2.0, 2.0, 4.0]]
    # D_(2) = 2 (a tie between filters 0 and 1): both weigh 2/2 unless elite; the elite 2 weighs 0
    w = plugin.penalty_weights()[0]
    assert w[2] == 0 and sorted(w.tolist()) == [0.0, 0.0, 1.0]


def test_ridge_adds_the_squared_norm_of_the_next_weighted_layer():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    plugin = make_plugin("ebp:K=1,lam=1.0,layer=1,ridge=0.25").attach(model, num_classes=3)
    x = torch.randn(2, 1, 2, 2)
    model(x)
    terms = plugin.loss(x, torch.tensor([0, 2]), None)
    assert terms["ebp_ridge"].item() == pytest.approx(0.25 * float(model[3].weight.detach().pow(2).sum()), rel=1e-6)


def test_ridge_needs_a_weighted_layer_after_the_regularised_one():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU())
    with pytest.raises(InspectnetError, match="no layer with weights follows"):
        make_plugin("ebp:K=1,layer=1,ridge=0.1").attach(model, num_classes=2)


def test_all_variant_gives_zero_weight_to_a_class_without_evidence():
    model = nn.Sequential(nn.Identity())
    plugin = make_plugin("ebp:K=1,lam=1.0,layer=0,variant=all").attach(model, num_classes=3)
    x = torch.tensor([[2.0, -4.0], [1.0, 1.0]])
    model(x)
    plugin.loss(x, torch.tensor([0, 0]), None)
    w = plugin.penalty_weights()
    assert w.tolist() == [[0.6, 1.0], [0.0, 0.0], [0.0, 0.0]]   # D0 = (3, 5): D_j / D_(1); classes 1, 2: nothing yet


def test_elite_variant_gives_zero_weight_to_a_class_whose_kth_value_is_zero():
    model = nn.Sequential(nn.Identity())
    plugin = make_plugin("ebp:K=2,lam=1.0,layer=0").attach(model, num_classes=2)
    x = torch.tensor([[0.0, 3.0, 0.0]])
    model(x)
    plugin.loss(x, torch.tensor([0]), None)
    assert plugin.penalty_weights().tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_elites_before_any_batch_and_their_distinct_count_at_epoch_end():
    model = nn.Sequential(nn.Identity())
    plugin = make_plugin("ebp:K=1,lam=1.0,layer=0").attach(model, num_classes=3)
    assert plugin.elites() == [[], [], []] and plugin.state_dict() == {}
    x = torch.tensor([[1.0, 5.0], [4.0, 1.0], [0.0, 7.0]])
    model(x)
    plugin.loss(x, torch.tensor([0, 1, 2]), None)
    assert plugin.elites() == [[1], [0], [1]]
    assert plugin.epoch_end(0)["distinct_elites"] == 2.0


def test_unlabelled_samples_and_a_missing_forward_are_refused():
    model = nn.Sequential(nn.Identity())
    plugin = make_plugin("ebp:K=1,layer=0").attach(model, num_classes=2)
    with pytest.raises(InspectnetError, match="did not run in the forward pass"):
        plugin.loss(None, torch.tensor([0]), None)
    model(torch.ones(1, 2))
    with pytest.raises(InspectnetError, match="needs labels"):
        plugin.loss(None, torch.tensor([-1]), None)


def test_signals_are_averaged_over_their_length():
    model = nn.Sequential(nn.Identity())
    plugin = make_plugin("ebp:K=1,lam=1.0,layer=0").attach(model, num_classes=1)
    x = torch.tensor([[[1.0, -3.0], [2.0, 2.0]]])        # (B=1, C=2, L=2): A = (2, 2)
    model(x)
    plugin.loss(x, torch.tensor([0]), None)
    assert plugin.D.tolist() == [[2.0, 2.0]]


def test_ridge_reads_the_layer_right_after_the_regularised_one():
    model = nn.Sequential(nn.Identity(), nn.Linear(3, 2), nn.Linear(2, 2))
    plugin = make_plugin("ebp:K=1,lam=1.0,layer=0,ridge=1.0").attach(model, num_classes=2)
    x = torch.randn(2, 3)
    model(x)
    terms = plugin.loss(x, torch.tensor([0, 1]), None)
    assert terms["ebp_ridge"].item() == pytest.approx(float(model[1].weight.detach().pow(2).sum()), rel=1e-6)


@pytest.mark.parametrize("variant,expected", [("all", [0.4, 1.0, 0.2]), ("elite", [0.0, 0.0, 0.5])])
def test_weights_of_activations_below_one(variant, expected):
    """D = (0.2, 0.5, 0.1): the appendix variant divides by D_(1) = 0.5; with K = 2 the elites are filters 1 and 0,
    and filter 2 weighs D_2 / D_(2) = 0.1 / 0.2."""
    model = nn.Sequential(nn.Identity())
    plugin = make_plugin(f"ebp:K=2,lam=1.0,layer=0,variant={variant}").attach(model, num_classes=1)
    x = torch.tensor([[0.2, -0.5, 0.1]])
    model(x)
    plugin.loss(x, torch.tensor([0]), None)
    assert plugin.penalty_weights()[0].tolist() == pytest.approx(expected)


def test_k_may_equal_the_number_of_filters():
    model = nn.Sequential(nn.Identity())
    plugin = make_plugin("ebp:K=3,lam=1.0,layer=0").attach(model, num_classes=1)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    model(x)
    assert plugin.loss(x, torch.tensor([0]), None)["ebp"].item() == 0.0   # every filter is an elite
