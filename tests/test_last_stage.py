"""The ``last_stage`` alias is the last spatial map before the head, also where the head starts with layers of its
own (timm's pre_logits, a conv head after global pooling)."""

import timm
import torch

from inspectnet.models.layers import last_stage


def _output_shape(model: torch.nn.Module, name: str, size: int) -> tuple[int, ...]:
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    handle.remove()
    return seen[0]


def test_last_stage_skips_vggs_conv_mlp_and_the_conv_head_after_global_pooling():
    vgg = timm.create_model("vgg11", num_classes=2)
    assert last_stage(vgg) == "features"
    assert _output_shape(vgg, "features", 64) == (1, 512, 2, 2)          # a map, not ConvMlp's single position
    mbv3 = timm.create_model("mobilenetv3_small_050", num_classes=2)
    assert last_stage(mbv3) == "blocks"
    assert _output_shape(mbv3, "blocks", 64)[2:] == (2, 2)             # before global pooling and the conv head
    assert last_stage(timm.create_model("resnet18", num_classes=2)) == "layer4"
