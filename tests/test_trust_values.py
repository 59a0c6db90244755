"""The trust measurement's values by hand: its defaults, the interval variation, refusals, the forward passes it
reports, AUCs on [0, 1], and Grad-CAM on a model whose parameters are frozen."""

import numpy as np
import pytest
import torch

from inspectnet.analysis.explain.trust import (
    TrustConfig,
    coarse_curve,
    interval_variation,
    maps_in_one_pass,
    trust_measurement,
)
from inspectnet.core.errors import InspectnetError
from inspectnet.models.zoo import load_model


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return load_model("resnet18", num_classes=3, input_size=64)


def test_trust_defaults_are_seven_steps_blur_batches_of_32_seed_0_and_the_last_conv():
    c = TrustConfig()
    assert (c.steps, c.baseline, c.batch_size, c.seed, c.gradcam_layer) == (7, "blur", 32, 0, "last_conv")
    one = TrustConfig(steps=1, batch_size=1)                       # the smallest of each is accepted
    assert (one.steps, one.batch_size) == (1, 1)
    for bad in ({"steps": 0}, {"batch_size": 0}, {"steps": 3}):
        with pytest.raises(InspectnetError):
            TrustConfig(**bad)


def test_interval_variation_sums_each_coarse_intervals_range_by_hand():
    curve = np.array([[0.2, 1.0, 0.4, 0.9, 0.6], [0.5, 0.5, 0.5, 0.5, 0.5]])
    # intervals [0.2, 1.0, 0.4] and [0.4, 0.9, 0.6]: ranges 0.8 and 0.5
    assert interval_variation(curve, 2).tolist() == pytest.approx([1.3, 0.0])
    assert interval_variation(curve, 4).tolist() == pytest.approx([0.8 + 0.6 + 0.5 + 0.3, 0.0])


@pytest.mark.parametrize("steps", [0, 3, -1])
def test_a_coarse_curve_must_take_a_positive_divisor_of_the_reference_steps(steps):
    with pytest.raises(InspectnetError, match="has no .*-step sub-curve"):
        coarse_curve(np.zeros((1, 5)), steps)


def test_the_measurement_refuses_no_images_or_a_count_of_indices_not_the_images(small_model):
    x = torch.rand(2, 3, 64, 64)
    for images, indices in ((x[:0], []), (x, [0]), (x[:1], [0, 1])):
        with pytest.raises(InspectnetError, match=f"got {len(images)} images and {len(indices)} indices"):
            trust_measurement(small_model, images, indices=indices, config=TrustConfig(steps=1))


def test_the_measurement_counts_every_forward_pass_and_keeps_aucs_on_the_unit_interval(small_model):
    """2 images, 2 steps: the pass for the maps (2), the baselines (2), and per ranked map and curve one inner point
    (2 maps each of evidence and random, × 2 curves). The random network's Grad-CAM is constant on these images:
    nothing to rank, no pass. 12 images through the model."""
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64)
    r = trust_measurement(small_model, x, indices=[5, 9], config=TrustConfig(steps=2, batch_size=5))
    assert [r["methods"][m]["evaluated"] for m in ("evidence", "gradcam", "random")] == [2, 0, 2]
    assert r["forward_passes"] == 12
    one = trust_measurement(small_model, x[:1], indices=[5], config=TrustConfig(steps=2))
    assert one["forward_passes"] == 6 and one["images"] == 1
    for method in ("evidence", "random"):
        for kind in ("deletion_auc", "insertion_auc"):
            values = np.array(r["per_image"][method][kind])
            assert ((values > 0) & (values < 1)).all(), (method, kind, values)


def test_gradcam_in_one_pass_works_on_a_model_whose_parameters_are_frozen(small_model):
    torch.manual_seed(2)
    x = torch.rand(2, 3, 64, 64)
    logits, maps = maps_in_one_pass(small_model, x, layer="layer4")
    small_model.model.requires_grad_(False)
    try:
        frozen_logits, frozen = maps_in_one_pass(small_model, x, layer="layer4")
    finally:
        small_model.model.requires_grad_(True)
    assert torch.equal(logits, frozen_logits) and torch.allclose(maps["gradcam"], frozen["gradcam"])
    assert maps["gradcam"].abs().sum() > 0
