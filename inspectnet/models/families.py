"""One small model per architecture family, with the smallest input it accepts: the rows of the family matrix.

Heads differ by family (average pooling + linear, a norm after pooling, a conv head and activation
after pooling, an MLP head, a class token, mean-pooled tokens, channels-last maps, distillation
heads, hybrids, torchvision models without timm's split), and so does what inspectnet can do
exactly with them. :mod:`inspectnet.pipelines.families` runs every capability on every row.

Rows whose model is large or slow on a CPU are marked ``slow``. ``kwargs`` go to the model's
constructor (a smaller image size, fewer blocks), so the row is the family at a test-friendly size.
Random weights are used; :func:`trained_looking` gives the norms and the classifier values away
from their initial ones, so a check cannot pass because a BatchNorm is still the identity.

>>> [r.name for r in FAMILIES][:3]
['ResNet', 'MobileNetV2', 'MobileNetV3']
>>> zm = family_model(family("ConvNeXt"), num_classes=2)
>>> zm.data_config["input_size"]
(3, 64, 64)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from inspectnet.core.errors import InspectnetError
from inspectnet.models.builders import IMAGENET_MEAN, IMAGENET_STD, find_head
from inspectnet.models.layers import NORMALISATIONS
from inspectnet.models.zoo import ZooModel, default_class_names, load_model, seeded


@dataclasses.dataclass(frozen=True)
class Family:
    """A row of the family table.

    The family's ``name``, a model ``spec`` (timm or ``torchvision:``), the input ``size`` (px),
    constructor ``kwargs``, what its head does (``head``) and whether the row is ``slow``.
    """

    name: str
    spec: str
    size: int
    head: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    slow: bool = False

    def describe(self) -> str:
        """``spec`` with its size and constructor arguments.

        Returns:
            e.g. ``vit_tiny_patch16_224 (64 px, img_size=64)``.

        Examples:
            >>> Family("X", "resnet18", 64, "pool").describe()
            'resnet18 (64 px)'
        """
        extra = "".join(f", {k}={v}" for k, v in self.kwargs.items())
        return f"{self.spec} ({self.size} px{extra})"


FAMILIES: tuple[Family, ...] = (
    Family("ResNet", "resnet18", 64, "average pooling + linear"),
    Family("MobileNetV2", "mobilenetv2_050", 64, "average pooling + linear"),
    Family("MobileNetV3", "mobilenetv3_small_050", 64, "1x1 conv head + activation after pooling"),
    Family("RegNet", "regnetx_002", 64, "average pooling + linear"),
    Family("DenseNet", "densenet121", 64, "average pooling + linear", slow=True),
    Family("VGG", "vgg11", 64, "7x7 conv MLP head", slow=True),
    Family("Inception-v3", "inception_v3", 107, "average pooling + linear", slow=True),
    Family("ConvNeXt", "convnext_atto", 64, "LayerNorm after pooling"),
    Family("ViT", "vit_tiny_patch16_224", 64, "class token", {"img_size": 64}),
    Family("DeiT-distilled", "deit_tiny_distilled_patch16_224", 64, "class + distillation tokens, two heads",
           {"img_size": 64}),
    Family("EVA-02", "eva02_tiny_patch14_224", 56, "mean-pooled tokens + fc_norm", {"img_size": 56}),
    Family("BEiT", "beit_base_patch16_224", 32, "mean-pooled tokens + fc_norm", {"img_size": 32, "depth": 2}),
    Family("Swin", "swin_tiny_patch4_window7_224", 64, "channels-last maps", {"img_size": 64, "window_size": 2}),
    Family("LeViT", "levit_128s", 128, "mean-pooled tokens, BatchNorm + two heads", {"img_size": 128}),
    Family("EfficientViT", "efficientvit_b0", 64, "conv + MLP head"),
    Family("MobileViT-v2", "mobilevitv2_050", 64, "average pooling + linear"),
    Family("torchvision MobileNetV2", "torchvision:mobilenet_v2", 64, "average pooling + linear (no timm split)"),
    Family("torchvision ViT", "torchvision:vit_b_16", 32, "class token (no timm split)", {"image_size": 32},
           slow=True),
)


def family(name: str) -> Family:
    """The row called ``name`` (case-insensitive).

    Args:
        name: a family name of :data:`FAMILIES`.

    Returns:
        The :class:`Family` row.

    Raises:
        InspectnetError: the name is unknown (the message lists the known ones).

    Examples:
        >>> family("swin").spec
        'swin_tiny_patch4_window7_224'
    """
    for row in FAMILIES:
        if row.name.lower() == name.lower():
            return row
    raise InspectnetError(f"unknown model family {name!r}; expected one of {', '.join(r.name for r in FAMILIES)}")


def family_model(row: Family, *, num_classes: int = 2, seed: int = 0) -> ZooModel:
    """The row's model with random weights (seeded), ``num_classes`` outputs and the row's input size.

    Args:
        row: a :class:`Family` row.
        num_classes: classes of the new head.
        seed: seeds the initialisation and :func:`trained_looking`.

    Returns:
        The :class:`ZooModel`, in eval mode, with trained-looking norms and head.

    Examples:
        >>> family_model(family("ResNet")).head_name
        'fc'
    """
    if not row.kwargs:
        zm = load_model(row.spec, num_classes=num_classes, input_size=row.size, seed=seed)
    else:
        with seeded(seed):
            zm = _build(row, num_classes)
    trained_looking(zm.model, seed)
    return zm


def _build(row: Family, num_classes: int) -> ZooModel:
    """A model built with constructor arguments that :func:`load_model` does not pass (image size, depth)."""
    source, _, arch = row.spec.rpartition(":")
    source = source or "timm"
    if source == "timm":
        import timm

        model = timm.create_model(arch, num_classes=num_classes, **row.kwargs)
        cfg = dict(timm.data.resolve_model_data_config(model))
    else:
        import torchvision

        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **row.kwargs)
        cfg = {"interpolation": "bilinear", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    cfg.update(input_size=(3, row.size, row.size), crop_pct=1.0, crop_mode="center")
    return ZooModel(model=model.eval(), source=source, arch=arch, num_classes=num_classes, in_chans=3,
                    data_config=cfg, class_names=default_class_names(num_classes), head_name=find_head(model))


def trained_looking(model: nn.Module, seed: int = 0) -> None:
    """Move every norm's statistics and every classifier bias away from their initial values, in place (seeded).

    A linear layer initialised to zero weights (torchvision's ViT classifier) gets uniform ±1/√fan_in
    weights, so its logits depend on the input.

    Scales, shifts, running means and variances leave (1, 0, 0, 1) and biases 0. A freshly initialised
    BatchNorm is the identity in eval mode and a fresh head's bias is zero: a check of
    "evidence + offset = logit" would not see either term. Values stay in ranges a trained model has
    (scales 0.7-1.3, running variances 0.5-2).

    Args:
        model: changed in place.
        seed: seeds the values.

    Examples:
        >>> m = nn.Sequential(nn.BatchNorm1d(3)); trained_looking(m); bool(m[0].running_var.min() >= 0.5)
        True
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(low + (high - low) * torch.rand(t.shape, generator=gen, dtype=torch.float32).to(t.dtype))

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NORMALISATIONS) and getattr(m, "weight", None) is not None:
                uniform(m.weight, 0.7, 1.3)
                if m.bias is not None:
                    uniform(m.bias, -0.2, 0.2)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                uniform(m.running_mean, -0.2, 0.2)
                uniform(m.running_var, 0.5, 2.0)
            if isinstance(m, nn.Linear) and not m.weight.any():
                bound = m.in_features ** -0.5
                uniform(m.weight, -bound, bound)
            if isinstance(m, nn.Linear) and m.bias is not None:
                uniform(m.bias, -0.5, 0.5)
