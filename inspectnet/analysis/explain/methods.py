"""The explanations the audit shows, as (B, h, w) maps of one target class per image, batched.

* ``integrated_gradients`` — captum Integrated Gradients from the all-zero input (the data mean in
  normalised space), |attribution| summed over channels, at input resolution;
* ``gradcam`` — captum Layer Grad-CAM at the last convolution (ReLU applied), at that layer's resolution;
* ``evidence`` — the exact class-evidence map of the model's head, dense or decomposed
  (:mod:`~inspectnet.analysis.explain.exact_evidence`): the pooled last map's evidence at its resolution,
  or, for token transformers (ViT, DeiT-distilled, BEiT, torchvision's ViT), the patch tokens' direct
  effects on the patch grid (the non-spatial remainder is not part of the map);
* ``random`` — the control every method must beat: uniform noise at the Grad-CAM layer's resolution,
  seeded by the image's index, so it is the same for every model (it must *fail* the sanity check).

Higher values mean "more relevant to the target class" for every method.

>>> maps = explanation_maps("gradcam", zm, x, targets, indices=range(len(x)))   # doctest: +SKIP
>>> maps.shape                                                                   # doctest: +SKIP
torch.Size([8, 7, 7])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from inspectnet.core.errors import InspectnetError
from inspectnet.models.layers import eval_mode, resolve_layers

if TYPE_CHECKING:
    from inspectnet.models.zoo import ZooModel

METHODS = ("integrated_gradients", "gradcam", "evidence", "random")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Parameters of the methods: IG steps and internal batch, the Grad-CAM layer, the random control's seed.

    Attributes:
        ig_steps: Integrated Gradients' steps from the zero baseline.
        internal_batch_size: inputs per forward pass inside Integrated Gradients.
        gradcam_layer: the Grad-CAM layer (a name or alias; default the last convolution).
        seed: seeds the random control.
        batch_size: images explained at a time.
    """

    ig_steps: int = 16
    internal_batch_size: int = 64
    gradcam_layer: str = "last_conv"
    seed: int = 0
    batch_size: int = 16


def explanation_maps(method: str, zm: ZooModel, x: torch.Tensor, targets: torch.Tensor, *,
                     indices: Sequence[int], config: MethodConfig = MethodConfig()) -> torch.Tensor:
    """Explanation maps of ``method`` for the inputs ``x`` and classes ``targets``.

    The maps are computed ``config.batch_size`` images at a time on the model's device.

    Args:
        method: ``integrated_gradients``, ``gradcam``, ``evidence`` or ``random``.
        zm: the model.
        x: (B, C, H, W) model inputs.
        targets: (B,) the class each map explains.
        indices: the images' positions in their dataset (they seed the random control).
        config: the methods' parameters.

    Returns:
        The (B, h, w) maps, float32 on the CPU.

    Raises:
        InspectnetError: an unknown ``method``.

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=3, input_size=64)
        >>> x, t = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
        >>> explanation_maps("gradcam", zm, x, t, indices=[0, 1]).shape
        torch.Size([2, 2, 2])
    """
    if method not in METHODS:
        raise InspectnetError(f"explanation method {method!r} is unknown; expected one of {', '.join(METHODS)}")
    indices, device, out = list(indices), next(zm.model.parameters()).device, []
    with eval_mode(zm.model):
        for s in range(0, len(x), config.batch_size):
            xb, tb = x[s:s + config.batch_size].to(device), targets[s:s + config.batch_size].to(device)
            out.append(_MAKERS[method](zm, xb, tb, indices[s:s + config.batch_size], config).detach().float().cpu())
    return torch.cat(out)


def _integrated_gradients(zm: ZooModel, x: torch.Tensor, targets: torch.Tensor, _indices: list[int],
                          config: MethodConfig) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(zm.model).attribute(x, baselines=torch.zeros_like(x), target=targets,
                                                 n_steps=config.ig_steps,
                                                 internal_batch_size=config.internal_batch_size)
    return ig.abs().sum(1)


def _gradcam(zm: ZooModel, x: torch.Tensor, targets: torch.Tensor, _indices: list[int],
             config: MethodConfig) -> torch.Tensor:
    from captum.attr import LayerGradCam

    layer = zm.model.get_submodule(gradcam_layer(zm, config))
    return LayerGradCam(zm.model, layer).attribute(x, target=targets, relu_attributions=True).sum(1)


def gradcam_layer(zm: ZooModel, config: MethodConfig = MethodConfig()) -> str:
    """The resolved name of the Grad-CAM layer (default: the last convolution).

    Args:
        zm: the model.
        config: the methods' parameters (``gradcam_layer``).

    Returns:
        The module name.

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> gradcam_layer(load_model("resnet18", num_classes=3, input_size=32))
        'layer4.1.conv2'
    """
    return resolve_layers(zm.model, config.gradcam_layer, head_name=zm.head_name)[-1]


def _evidence(zm: ZooModel, x: torch.Tensor, targets: torch.Tensor, _indices: list[int],
              _config: MethodConfig) -> torch.Tensor:
    from inspectnet.analysis.explain.exact_evidence import exact_evidence

    return exact_evidence(zm, x, targets[:, None]).maps[:, 0]


def _random(zm: ZooModel, x: torch.Tensor, _targets: torch.Tensor, indices: list[int],
            config: MethodConfig) -> torch.Tensor:
    return random_maps(indices, map_size(zm, x, config), config.seed)


def random_maps(indices: Sequence[int], size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """The random control: uniform noise, seeded by each image's index.

    Args:
        indices: the images' positions in their dataset.
        size: (h, w) of each map.
        seed: offsets every image's seed.

    Returns:
        The (len(indices), h, w) maps.

    Examples:
        >>> bool(torch.equal(random_maps([3], (2, 2))[0], random_maps([1, 3], (2, 2))[1]))
        True
    """
    return torch.stack([torch.rand(*size, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i)))
                        for i in indices])


def map_size(zm: ZooModel, x: torch.Tensor, config: MethodConfig = MethodConfig()) -> tuple[int, int]:
    """The size of the Grad-CAM layer's output for inputs shaped like ``x`` (one forward pass of one image).

    Args:
        zm: the model.
        x: (B, C, H, W) model inputs.
        config: the methods' parameters (``gradcam_layer``).

    Returns:
        (h, w).

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> map_size(load_model("resnet18", num_classes=3, input_size=64), torch.randn(1, 3, 64, 64))
        (2, 2)
    """
    layer = zm.model.get_submodule(gradcam_layer(zm, config))
    seen: list[tuple[int, int]] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[-2:])))
    try:
        with torch.no_grad():
            zm.model(x[:1])
    finally:
        handle.remove()
    return seen[0]


_MAKERS: dict[str, Callable[..., torch.Tensor]] = {
    "integrated_gradients": _integrated_gradients, "gradcam": _gradcam, "evidence": _evidence, "random": _random}
