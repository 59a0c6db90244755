"""Concept discovery on every model family: maps read in each layer's own layout, exact where the head pools it."""

import pytest
import torch

from inspectnet.analysis.concepts.discover import discover_concepts
from inspectnet.analysis.concepts.importance import deletion_check
from inspectnet.data import load_data
from inspectnet.models.layout import Layout, layer_layout
from inspectnet.models.zoo import load_model

SMALL_SWIN = {"build_args": {"depths": (1, 1, 1, 1)}}
SMALL_VIT = {"input_size": 64, "build_args": {"depth": 2}}
VIT_AVG = {"input_size": 64, "build_args": {"depth": 2, "global_pool": "avg", "fc_norm": False}}


def _model(arch, **kw):
    zm = load_model(arch, num_classes=3, seed=0, **kw)
    with torch.no_grad():  # a head bias far from zero: the split must carry it
        zm.head.bias.copy_(torch.tensor([-2.0, 0.5, 3.0]))
    return zm


@pytest.mark.parametrize("arch, kw, layer, kind", [
    ("torchvision:resnet18", {"input_size": 64}, "layer4", "exact"),
    ("swin_tiny_patch4_window7_224", SMALL_SWIN, "norm", "exact"),            # channels-last, pooled after its norm
    ("vit_tiny_patch16_224", VIT_AVG, "norm", "exact"),                       # tokens averaged, class token left out
    ("vit_tiny_patch16_224", SMALL_VIT, "norm", "gradient_x_activation"),     # the head reads the class token
    ("swin_tiny_patch4_window7_224", SMALL_SWIN, "layers.3", "gradient_x_activation"),  # a LayerNorm follows
    ("convnext_atto", {"input_size": 64}, "stages.3", "gradient_x_activation"),  # the head norms the pooled vector
    ("mobilenetv3_small_050", {"input_size": 64}, "blocks.5", "gradient_x_activation"),  # conv + act after pooling
    ("levit_128s", {}, "stages.2", "gradient_x_activation"),
])
def test_discovery_runs_on_every_family_and_is_exact_only_where_the_head_pools_the_layer(arch, kw, layer, kind):
    zm = _model(arch, **kw)
    c = discover_concepts(zm, load_data("shapes?n=10"), layer, "sae", k=3, active=2, seeds=2, epochs=1,
                          batch_size=5, check_images=4)
    assert c.importance["kind"] == kind
    if kind == "exact":
        assert c.importance["max_closure_error"] < 1e-4
        biases = {round(r["bias"], 4) for r in c.importance["classes"]}
        assert biases <= {-2.0, 0.5, 3.0}
    else:
        assert c.importance["faithfulness"]["images"] == 4
        assert all(abs(v) < float("inf") for v in c.importance["per_concept"])
    assert len(c.concepts) == 3 and c.channels == c.basis.shape[1]


def test_layout_output_of_inverts_maps_and_zeroes_the_prefix_tokens():
    maps = torch.randn(2, 5, 3, 4)
    for layout in (Layout("NCHW", (3, 4)), Layout("NHWC", (3, 4)), Layout("NLC", (3, 4), 2)):
        out = layout.output_of(maps)
        assert torch.equal(layout.maps(out), maps)
    tokens = Layout("NLC", (3, 4), 2).output_of(maps)
    assert tokens.shape == (2, 14, 5) and not tokens[:, :2].any()
    assert torch.equal(tokens[0, 2 + 1 * 4 + 2], maps[0, :, 1, 2])  # token of row 1, column 2
    assert Layout("NHWC", (3, 4)).output_of(maps).shape == (2, 3, 4, 5)


@pytest.mark.parametrize("arch, kw, layer", [("vit_tiny_patch16_224", SMALL_VIT, "blocks.1"),
                                             ("swin_tiny_patch4_window7_224", SMALL_SWIN, "layers.3")])
def test_deletion_check_on_tokens_and_channels_last_equals_the_literal_computation(arch, kw, layer):
    zm = _model(arch, **kw)
    net, size = zm.model, zm.data_config["input_size"][1]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    caught = {}

    def keep(_m, _i, out):
        out.retain_grad()
        caught["out"] = out

    handle = net.get_submodule(layer).register_forward_hook(keep)
    logits = net(x)
    handle.remove()
    pred = logits.argmax(1)
    logits.gather(1, pred[:, None]).sum().backward()
    layout = layer_layout(net, layer, caught["out"], input_shape=x.shape)
    h, w = layout.grid
    basis = torch.rand(2, caught["out"].shape[-1], generator=torch.Generator().manual_seed(2))
    codes = torch.rand(2, 2, h, w, generator=torch.Generator().manual_seed(3))
    check = deletion_check(net, layer, x, codes, basis)

    grad = caught["out"].grad
    grad = grad[:, layout.prefix_tokens:].reshape(2, h, w, -1) if layout.kind == "NLC" else grad  # (B, h, w, C)
    for m in range(2):
        part = torch.einsum("bhw,c->bhwc", codes[:, m], basis[m])  # concept m's component, channels last
        want = (part * grad).sum((1, 2, 3))
        torch.testing.assert_close(torch.from_numpy(check["estimate"][:, m]), want.float(), rtol=1e-4, atol=1e-5)

        def remove(_m, _i, out, part=part):
            if layout.kind == "NLC":
                return torch.cat([out[:, :layout.prefix_tokens], out[:, layout.prefix_tokens:] - part.flatten(1, 2)], 1)
            return out - part

        handle = net.get_submodule(layer).register_forward_hook(remove)
        with torch.no_grad():
            dropped = logits.detach().gather(1, pred[:, None])[:, 0] - net(x).gather(1, pred[:, None])[:, 0]
        handle.remove()
        torch.testing.assert_close(torch.from_numpy(check["drop"][:, m]), dropped, rtol=1e-4, atol=1e-5)
