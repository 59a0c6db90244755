"""The explanation methods' parameters and maps by their definitions: defaults, Integrated Gradients summed over
channels, the random control's seeds, the map size of the Grad-CAM layer."""

import torch

from inspectnet.analysis.explain.methods import MethodConfig, explanation_maps, map_size, random_maps
from inspectnet.models.zoo import load_model


def test_method_defaults_are_16_ig_steps_in_batches_of_64_the_last_conv_seed_0_and_16_images_at_a_time():
    c = MethodConfig()
    assert (c.ig_steps, c.internal_batch_size, c.gradcam_layer, c.seed, c.batch_size) == (16, 64, "last_conv", 0, 16)


def test_the_random_control_of_image_i_is_uniform_noise_seeded_by_seed_times_1000003_plus_i():
    maps = random_maps([0, 7, 2], (3, 5), seed=4)
    for row, i in zip(maps, [0, 7, 2]):
        assert torch.equal(row, torch.rand(3, 5, generator=torch.Generator().manual_seed(4 * 1_000_003 + i)))


def test_maps_of_oblong_inputs_have_the_input_size_for_ig_and_the_layer_size_for_gradcam_and_random():
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=3, input_size=64)
    x, targets = torch.rand(2, 3, 64, 96), torch.tensor([0, 2])
    assert map_size(zm, x) == (2, 3)
    config = MethodConfig(ig_steps=2)
    ig = explanation_maps("integrated_gradients", zm, x, targets, indices=[0, 1], config=config)
    assert ig.shape == (2, 64, 96) and bool((ig >= 0).all())
    for method in ("gradcam", "random", "evidence"):
        assert explanation_maps(method, zm, x, targets, indices=[0, 1], config=config).shape == (2, 2, 3), method
