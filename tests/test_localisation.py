"""Localisation of explanation maps on object masks: the energy-based pointing game (Score-CAM), by hand and in
the explanation-quality report."""

import numpy as np
import pytest
import torch

from inspectnet.analysis.explain.faithfulness import FaithfulnessConfig
from inspectnet.analysis.explain.localisation import energy_pointing_game, localisation_summary, mask_view
from inspectnet.analysis.explain.methods import random_maps
from inspectnet.core.errors import InspectnetError
from inspectnet.data import load_data

NAN = float("nan")


def test_pointing_game_is_the_positive_energy_inside_the_mask():
    # same resolution: positive energy 1 + 2 = 3, of which 1 inside
    maps = torch.tensor([[[1.0, -1.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 5.0]]])
    masks = torch.tensor([[[True, False], [False, False]], [[True, True], [True, False]]])
    assert energy_pointing_game(maps, masks).tolist() == pytest.approx([1 / 3, 0.0])
    # a 1x2 map upsampled (bilinear, half-pixel centres) to 2x4: columns a, (3a+b)/4, (a+3b)/4, b
    left = torch.tensor([[[True, True, False, False]] * 2])
    assert energy_pointing_game(torch.tensor([[[4.0, 0.0]]]), left).tolist() == pytest.approx([14 / 16])
    # the sign is dropped after upsampling: row [4, 2, -2, -4] keeps 4 + 2; column 1 holds 2 of 6
    second = torch.tensor([[[False, True, False, False]] * 2])
    assert energy_pointing_game(torch.tensor([[[4.0, -4.0]]]), second).tolist() == pytest.approx([1 / 3])


def test_a_map_with_little_positive_energy_is_scored_by_its_share_not_its_size():
    """Total energy 4 · 2^-10 (below 1): the share inside is still 2^-10 / (4 · 2^-10)."""
    maps = torch.tensor([[[2.0 ** -10, 3 * 2.0 ** -10], [0.0, -0.5]]])
    masks = torch.tensor([[[True, False], [True, True]]])
    assert energy_pointing_game(maps, masks).tolist() == pytest.approx([0.25], rel=1e-12)


def test_one_scored_image_has_a_mean_and_no_standard_error():
    got = localisation_summary(np.array([0.4]), torch.ones(1, 2, 2, dtype=torch.bool), control=np.array([0.1]))
    assert (got["energy_pointing_game"], got["energy_pointing_game_se"]) == (pytest.approx(0.4), None)
    assert got["vs_random"] == {"difference": pytest.approx(0.3), "difference_se": None}


def test_a_resampled_pixel_half_inside_the_object_counts_as_object_a_quarter_does_not():
    one_pixel = {"input_size": [3, 1, 1], "crop_pct": 1.0}
    half = np.array([[True, False], [True, False]])
    quarter = np.zeros((4, 4), bool)
    quarter[:, 0] = True
    assert mask_view(half, one_pixel).tolist() == [[True]] and mask_view(quarter, one_pixel).tolist() == [[False]]


def test_maps_without_positive_energy_are_not_scored():
    masks = torch.ones(3, 2, 2, dtype=torch.bool)
    maps = torch.tensor([[[-1.0, -2.0], [0.0, -3.0]], [[NAN, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    assert np.isnan(energy_pointing_game(maps, masks)).tolist() == [True, True, False]
    with pytest.raises(InspectnetError, match="same images"):
        energy_pointing_game(maps, masks[:2])


def test_summary_pairs_the_method_with_the_control_image_by_image():
    masks = torch.zeros(3, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = masks[1] = masks[2, 0] = True  # object shares 1/4, 1, 1/2
    got = localisation_summary(np.array([0.5, NAN, 0.9]), masks, control=np.array([0.1, 0.2, 0.3]))
    assert (got["evaluated"], got["no_positive_energy"]) == (2, 1)
    assert got["energy_pointing_game"] == pytest.approx(0.7)
    assert got["energy_pointing_game_se"] == pytest.approx(0.2)  # sd 0.2828 / sqrt(2)
    assert got["object_share"] == pytest.approx((0.25 + 1 + 0.5) / 3)
    assert got["vs_random"]["difference"] == pytest.approx(0.5)  # (0.4 + 0.6) / 2; the unscored image is left out
    assert got["vs_random"]["difference_se"] == pytest.approx(0.1)
    assert "vs_random" not in localisation_summary(np.array([0.5]), masks[:1])


def test_mask_follows_the_models_resize_and_crop_like_the_image():
    """The mask seen through mask_view equals the mask sent as a picture through the model's own transform."""
    from inspectnet.data.transforms import build_transform

    config = {"input_size": (3, 24, 24), "crop_pct": 0.75, "crop_mode": "center", "interpolation": "bilinear",
              "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    mask = np.zeros((40, 60), bool)
    mask[5:30, 10:25] = True
    from PIL import Image

    through_model = build_transform(config)(Image.fromarray(mask.astype(np.uint8) * 255))[0] >= 0.5
    view = mask_view(mask, config)
    assert view.shape == (24, 24) and 0 < view.sum() < 24 * 24
    assert torch.equal(view, through_model)


@pytest.fixture(scope="module")
def shapes_quality(tmp_path_factory):
    from inspectnet.models.zoo import load_model
    from inspectnet.pipelines.explain import ModelForm, QualityConfig, explanation_quality

    zm = load_model("test_resnet", num_classes=2, input_size=48, seed=0)
    data = load_data("shapes:test?n=40", zm.transform(), model_classes=None)
    config = QualityConfig(images=6, sanity_images=0, methods=("gradcam", "evidence"),
                           faithfulness=FaithfulnessConfig(steps=2, road_fractions=(0.5,)))
    doc = explanation_quality([ModelForm("full", zm)], data, tmp_path_factory.mktemp("q"), config)
    return zm, data, doc


def test_report_localises_every_method_and_the_random_control_on_masked_data(shapes_quality):
    zm, data, doc = shapes_quality
    rows = {r["method"]: r for r in doc["rows"] if r["status"] == "ok"}
    assert set(rows) == {"gradcam", "evidence", "random"}
    masks = torch.stack([mask_view(data.object_mask(i), zm.data_config) for i in range(6)])
    assert doc["localisation"]["object_share"] == pytest.approx(float(masks.double().mean()))
    assert 0.02 < doc["localisation"]["object_share"] < 0.5  # two shapes on a black 64x64 canvas
    # the control's value is the pointing game of the same seeded noise on the same masks
    control = energy_pointing_game(random_maps(range(6), tuple(rows["random"]["map_size"])), masks)
    assert rows["random"]["localisation"]["energy_pointing_game"] == pytest.approx(float(control.mean()))
    assert "vs_random" not in rows["random"]["localisation"]
    for method in ("gradcam", "evidence"):
        loc = rows[method]["localisation"]
        assert loc["evaluated"] + loc["no_positive_energy"] == 6
        assert loc["vs_random"]["difference"] == pytest.approx(loc["energy_pointing_game"] - float(control.mean()))
    figure = next(f for f in doc["figures"] if f["path"].endswith("localisation.png"))
    assert "energy-based pointing game" in figure["caption"] and "random 2x2 (full)" in figure["caption"]


def test_data_without_masks_gets_no_localisation(tmp_path):
    from inspectnet.models.zoo import load_model
    from inspectnet.pipelines.explain import ModelForm, QualityConfig, explanation_quality

    zm = load_model("test_resnet", num_classes=10, in_chans=1, input_size=64, seed=0)
    config = QualityConfig(images=3, sanity_images=0, methods=("evidence",),
                           faithfulness=FaithfulnessConfig(steps=2, road_fractions=(0.5,)))
    doc = explanation_quality([ModelForm("full", zm)], load_data("digits:test", zm.transform()), tmp_path, config)
    assert "localisation" not in doc and not any("localisation" in r for r in doc["rows"])
    assert not any(f["path"].endswith("localisation.png") for f in doc["figures"])
