"""Token grids and channels-last maps: probes, reducers and dissection read each layout on its own axes.

ViT, DeiT-distilled and register ViTs: the patch tokens are the grid (row-major), the class,
distillation and register tokens never reach a map or a reduced value. Swin: (B, H, W, C) maps are
put on channels-first axes. A unit built inside a ViT to follow red pixels is found by dissection.
"""

import numpy as np
import pytest
import timm
import torch
from torch import nn

from inspectnet.analysis.dissect.dissection import dissect, to_maps
from inspectnet.core.errors import InspectnetError
from inspectnet.data.concepts import load_concepts
from inspectnet.models.layout import Layout, layer_layout
from inspectnet.probe.hooks import Probe

PLAIN = {"input_size": (3, 64, 64), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
PLANTED = 1.0e4  # written into the prefix tokens: any reduced value or map that reads one shows it


def _vit(name, num_classes=3, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=num_classes, **kw).eval()


TOKEN_MODELS = {  # name -> (model, input (H, W), prefix tokens, grid, excluded in words)
    "vit": (lambda: _vit("vit_tiny_patch16_224", img_size=64, depth=2), (64, 64), 1, (4, 4), "1 class token"),
    "vit_oblong": (lambda: _vit("vit_tiny_patch16_224", img_size=(64, 32), depth=1), (64, 32), 1, (4, 2),
                   "1 class token"),
    "deit_distilled": (lambda: _vit("deit_tiny_distilled_patch16_224", img_size=64, depth=1), (64, 64), 2, (4, 4),
                       "1 class token, 1 distillation token"),
    "vit_registers": (lambda: _vit("vit_small_patch14_reg4_dinov2", img_size=56, depth=1, embed_dim=64, num_heads=2),
                      (56, 56), 5, (4, 4), "1 class token, 4 register tokens"),
}


def _plant_prefix(module, prefix):
    """A forward hook that writes PLANTED into the prefix tokens of ``module``'s output."""
    def hook(_m, _i, out):
        out = out.clone()
        out[:, :prefix] = PLANTED
        return out
    return module.register_forward_hook(hook)


def _raw_output(model, layer, x):
    got = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, o: got.setdefault("out", o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return got["out"]


def _planted(family, batch):
    """(model with PLANTED prefix tokens at blocks.0, input, blocks.0's raw output, hook handle)."""
    make, (h, w), prefix, _grid, _words = TOKEN_MODELS[family]
    model = make()
    x = torch.rand(batch, 3, h, w)
    handle = _plant_prefix(model.get_submodule("blocks.0"), prefix)
    return model, x, _raw_output(model, "blocks.0", x), handle


@pytest.mark.parametrize("family", list(TOKEN_MODELS))
def test_token_maps_are_the_patch_tokens_on_their_grid_without_prefix_tokens(family):
    _, _, prefix, grid, words = TOKEN_MODELS[family]
    layer = "blocks.0"
    model, x, raw, handle = _planted(family, 2)
    assert raw.shape[1] == prefix + grid[0] * grid[1]
    patches = raw[:, prefix:]                                             # (B, h·w, C), row-major patches
    by_hand = torch.stack([torch.stack([patches[:, r * grid[1] + c] for c in range(grid[1])], dim=-1)
                           for r in range(grid[0])], dim=-2)              # (B, C, h, w) cell by cell
    with torch.no_grad(), Probe(model, [layer], reducer="full") as full:
        model(x)
    handle.remove()
    maps = full.outputs[layer]
    assert maps.shape == (2, raw.shape[2], *grid)
    assert torch.equal(maps, by_hand) and maps.abs().max() < PLANTED
    assert full.layouts[layer] == Layout("NLC", grid, prefix, words)
    assert torch.equal(to_maps(raw, layer, model, x.shape), by_hand)


@pytest.mark.parametrize("family", ["vit", "deit_distilled", "vit_registers"])
def test_reducers_average_each_channel_over_patch_tokens_only(family):
    prefix, layer = TOKEN_MODELS[family][2], "blocks.0"
    model, x, raw, handle = _planted(family, 3)
    patches = raw[:, prefix:].double()
    expected = {"absmean": patches.abs().mean(1), "mean": patches.mean(1), "max": patches.amax(1)}
    for reducer, want in expected.items():
        with torch.no_grad(), Probe(model, [layer], reducer=reducer) as p:
            model(x)
        got = p.outputs[layer]
        assert got.shape == (3, raw.shape[2]), reducer
        assert torch.allclose(got.double(), want, atol=1e-5), reducer
    handle.remove()


def _swin(hw):
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", img_size=hw, window_size=2, depths=(1, 1),
                             embed_dim=16, num_heads=(1, 1), num_classes=3).eval()


def test_swin_channels_last_maps_put_on_channel_first_axes():
    model = _swin((64, 32))                                               # H ≠ W: a swapped axis changes the shape
    x = torch.rand(2, 3, 64, 32)
    for layer, grid, units in (("layers.0", (16, 8), 16), ("layers.1", (8, 4), 32), ("patch_embed", (16, 8), 16)):
        raw = _raw_output(model, layer, x)
        assert raw.shape == (2, *grid, units)                             # (B, H, W, C)
        with torch.no_grad(), Probe(model, [layer], reducer="full") as full:
            model(x)
        assert full.layouts[layer].kind == "NHWC"
        assert torch.equal(full.outputs[layer], raw.permute(0, 3, 1, 2))
        with torch.no_grad(), Probe(model, [layer], reducer="absmean") as red:
            model(x)
        assert torch.allclose(red.outputs[layer], raw.abs().mean(dim=(1, 2)), atol=1e-6)
    # the stem's convolution is channels-first inside the same channels-last model
    with torch.no_grad(), Probe(model, ["patch_embed.proj"], reducer="full") as conv:
        model(x)
    assert conv.layouts["patch_embed.proj"].kind == "NCHW" and conv.outputs["patch_embed.proj"].shape == (2, 16, 16, 8)


def test_swin_flattened_tokens_inside_a_block_use_the_stage_grid():
    model = _swin((64, 32))
    x = torch.rand(1, 3, 64, 32)
    raw = _raw_output(model, "layers.1.blocks.0.mlp", x)                  # (B, 8·4, C), no prefix tokens
    with torch.no_grad(), Probe(model, ["layers.1.blocks.0.mlp"], reducer="full") as p:
        model(x)
    assert p.layouts["layers.1.blocks.0.mlp"] == Layout("NLC", (8, 4), 0, "")
    assert torch.equal(p.outputs["layers.1.blocks.0.mlp"], raw.transpose(1, 2).reshape(1, 32, 8, 4))


def test_layouts_that_have_no_grid_are_refused_in_one_line():
    model = _swin((64, 64))
    with pytest.raises(InspectnetError, match=r"first axis is not the batch of 2 images") as err, \
            torch.no_grad(), Probe(model, ["layers.0.blocks.0.attn"], reducer="absmean"):
        model(torch.rand(2, 3, 64, 64))                                   # attention windows fold into axis 0
    assert "\n" not in str(err.value)
    with pytest.raises(InspectnetError, match=r"15 tokens \(B, N, C\) that form no grid of the 64×64 input after "
                                              r"0 prefix tokens \(no declared patch grid\)"):
        layer_layout(nn.Linear(2, 2), "mixer", torch.zeros(2, 15, 8), input_shape=(2, 3, 64, 64))
    with pytest.raises(InspectnetError, match=r"18 tokens .* after 1 prefix tokens \(patch grid 4×4\)"):
        to_maps(torch.zeros(2, 18, 8), "blocks.0", _vit("vit_tiny_patch16_224", img_size=64, depth=1))
    with pytest.raises(InspectnetError, match="cannot reduce a 3-D activation"):
        from inspectnet.probe.hooks import absmean
        absmean(torch.zeros(2, 17, 8))


def test_channels_last_is_read_from_the_shape_where_the_model_declares_nothing():
    """A LayerNorm over channels-last maps in a channels-first model (ConvNeXt's blocks): (B, 16, 16, 40) of a
    64×64 input can only be channels-last; (B, 40, 16, 16) only channels-first."""
    norm = nn.LayerNorm(40)
    assert layer_layout(norm, "", torch.zeros(2, 16, 16, 40), input_shape=(2, 3, 64, 64)).kind == "NHWC"
    assert layer_layout(norm, "", torch.zeros(2, 40, 16, 16), input_shape=(2, 3, 64, 64)).kind == "NCHW"


# ---------------------------------------------------------------- a red unit inside a ViT
RED_UNIT, SHUFFLED_UNIT = 7, 0


def red_vit(num_classes: int = 3) -> nn.Module:
    """A 2-block ViT (8×8 grid of 8-pixel patches) whose residual-stream channel RED_UNIT is, at every patch
    token, the patch's mean of R − G − B on [0, 1] inputs: the patch embedding computes it, no position
    embedding or block writes into that channel. The class token's value there (5) exceeds every patch's
    (at most 1), so a class token read as a patch would take the unit's top activations."""
    model = _vit("vit_tiny_patch16_224", num_classes, img_size=64, patch_size=8, depth=2)
    with torch.no_grad():
        proj = model.patch_embed.proj
        proj.weight[RED_UNIT] = torch.tensor([1.0, -1.0, -1.0])[:, None, None] / 64.0
        proj.bias[RED_UNIT] = 0.0
        model.pos_embed[..., RED_UNIT] = 0.0
        model.cls_token[..., RED_UNIT] = 5.0
        for blk in model.blocks:
            for out in (blk.attn.proj, blk.mlp.fc2):
                out.weight[RED_UNIT] = 0.0
                out.bias[RED_UNIT] = 0.0
    return model


def test_red_unit_inside_a_vit_is_the_patch_red_indicator():
    model = red_vit()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad(), Probe(model, ["blocks.1"], reducer="full") as p:
        model(x)
    red = (x[:, 0] - x[:, 1] - x[:, 2]).reshape(2, 8, 8, 8, 8).mean(dim=(2, 4))   # (B, 8, 8) patch means
    assert torch.allclose(p.outputs["blocks.1"][:, RED_UNIT], red, atol=1e-5)


def _shuffled_red(model: nn.Module) -> None:
    """Make channel SHUFFLED_UNIT of ``blocks.1`` the red unit's values on permuted patches: the same values, in
    the wrong places. (A unit of the random ViT is no control: random patch embeddings are linear colour
    filters, and many of them follow red on these single-colour shapes.)"""
    perm = 1 + torch.randperm(64, generator=torch.Generator().manual_seed(0))

    def hook(_m, _i, out):
        out = out.clone()
        out[:, 1:, SHUFFLED_UNIT] = out[:, perm, RED_UNIT]
        return out
    model.blocks[1].register_forward_hook(hook)


def test_dissection_finds_the_red_unit_inside_a_vit_and_says_which_tokens_it_left_out():
    data = load_concepts("shapes?n=48&seed=1")
    model = red_vit()
    _shuffled_red(model)
    # red covers 4 % of the pixels and saturates the unit (1 on a red patch): the top 5 % can hold all of it
    d = dissect(model, data, "blocks.1", data_config=PLAIN, batch_size=16, quantile=0.05)
    info = d.layers["blocks.1"]
    assert info["map_size"] == [8, 8] and info["num_units"] == 192
    assert info["layout"] == {"kind": "NLC", "grid": [8, 8], "prefix_tokens": 1, "excluded": "1 class token"}
    unit = info["units"][RED_UNIT]
    red = d.concepts.index("red")
    assert (unit["concept"], unit["category"]) == ("red", "colour")
    assert unit["detector"] and unit["iou"] > 0.6
    assert 0 < unit["threshold"] < 1.0                                    # a patch value, never the class token's 5
    assert int(np.argmax(d.iou["blocks.1"][:, red])) == RED_UNIT
    shuffled = d.iou["blocks.1"][SHUFFLED_UNIT]
    assert info["units"][SHUFFLED_UNIT]["threshold"] == pytest.approx(unit["threshold"])   # same values ...
    assert shuffled[red] < d.iou_threshold and shuffled[red] < unit["iou"] / 8          # ... not on red


# ---------------------------------------------------------------- rules and receptive fields through the record
def red_vit_classifier(spec: str):
    """The red ViT as a 2-class model that averages its patch tokens and predicts class 0 when the image's mean
    red score is above the data's median (so rules have two predicted classes to explain); with its data."""
    from inspectnet.data import load_data
    from inspectnet.models.zoo import ZooModel

    model = red_vit(num_classes=2)
    model.global_pool, model.norm, model.fc_norm = "avg", nn.Identity(), nn.Identity()
    zm = ZooModel(model=model, source="timm", arch="vit_tiny_patch16_224", num_classes=2, in_chans=3,
                  data_config={**PLAIN, "interpolation": "bilinear", "crop_pct": 1.0},
                  class_names=["no square", "square"], head_name="head")
    data = load_data(spec, zm.transform())
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[0, RED_UNIT] = 1.0
        x = torch.stack([data[i][0] for i in range(len(data))])
        red = model.forward_features(x)[:, 1:, RED_UNIT].mean(1)
        model.head.bias.copy_(torch.tensor([0.0, float(red.median())]))
    return zm, data, x


def test_probe_record_rules_and_receptive_fields_read_patch_tokens_of_a_vit(tmp_path):
    from inspectnet.analysis.attributions import receptive_fields
    from inspectnet.analysis.rules.tree import extract_rules
    from inspectnet.probe.recorder import run_probe

    zm, data, x = red_vit_classifier("shapes?n=80&seed=2")
    train = run_probe(zm, data, "blocks.1", tmp_path / "train", batch_size=32)
    acts = np.asarray(train.activations("blocks.1"))
    assert acts.shape == (80, 192)
    assert train.manifest["layers"][0]["layout"] == {"kind": "NLC", "grid": [8, 8], "prefix_tokens": 1,
                                                     "excluded": "1 class token"}
    with torch.no_grad():
        tokens = zm.model.forward_features(x)                              # blocks.1's output (norm is Identity)
    assert np.allclose(acts, tokens[:, 1:].abs().mean(1).numpy(), atol=1e-5)   # the class token (5) left out
    assert acts[:, RED_UNIT].max() <= 1.0
    preds = np.asarray(train.logits).argmax(1)
    assert 0 < preds.sum() < 80
    rs, _ = extract_rules(train, "blocks.1")
    assert rs.train_fidelity > max(preds.mean(), 1 - preds.mean())      # better than the majority class
    rows = receptive_fields(zm, data, acts, "blocks.1", [RED_UNIT], tmp_path, top_n=3, quantile=0.9, sample=80)
    maps = tokens[:, 1:, RED_UNIT].reshape(80, 8, 8)
    assert rows[0]["threshold"] == pytest.approx(float(torch.quantile(maps.flatten(), 0.9)), rel=1e-5)
    assert rows[0]["top_images"] == [int(i) for i in np.argsort(-acts[:, RED_UNIT], kind="stable")[:3]]
    assert rows[0]["threshold"] < 1.0                                     # patch values, never the class token's 5
    assert (tmp_path / "receptive_fields.png").exists()


def _zoo(model: nn.Module, hw: tuple[int, int], head: str = "head"):
    from inspectnet.models.zoo import ZooModel

    return ZooModel(model=model, source="timm", arch=type(model).__name__, num_classes=3, in_chans=3,
                    data_config={**PLAIN, "input_size": (3, *hw)}, class_names=["a", "b", "c"], head_name=head)


def test_feature_maps_of_swin_and_of_a_mean_pooled_vit_are_on_their_grid():
    from inspectnet.analysis.attributions import feature_maps

    swin = _swin((64, 32))
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        nhwc = swin.forward_features(x)
    assert torch.equal(feature_maps(_zoo(swin, (64, 32), "head.fc"), x), nhwc.permute(0, 3, 1, 2))
    vit = _vit("vit_tiny_patch16_224", img_size=64, depth=1, global_pool="avg", fc_norm=False, reg_tokens=2)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        tokens = vit.forward_features(x)                                   # (2, 1 + 2 + 16, 192)
    want = tokens[:, 3:].reshape(2, 4, 4, 192).permute(0, 3, 1, 2)
    assert torch.equal(feature_maps(_zoo(vit, (64, 64)), x), want)


def test_feature_maps_refuse_a_head_that_reads_the_class_token():
    from inspectnet.analysis.attributions import feature_maps

    vit = _vit("vit_tiny_patch16_224", img_size=64, depth=1)
    with pytest.raises(InspectnetError, match=r"not the average of forward_features' tokens on a 4×4 grid \(1 class "
                                              r"token excluded\) \(the head reads a class token"):
        feature_maps(_zoo(vit, (64, 64)), torch.rand(2, 3, 64, 64))


def test_easr_penalises_each_channel_of_a_vit_block_over_patch_tokens_only():
    from inspectnet.plugins import make_plugin

    model, x, raw, handle = _planted("deit_distilled", 2)
    plugin = make_plugin("easr:lam=1,p=0.5,layer=blocks.0").attach(model, num_classes=3)
    with torch.no_grad():
        model(x)
        got = plugin.loss(x, None, None)["easr"]
    plugin.detach()
    handle.remove()
    a = raw[:, 2:].abs().mean(1)                                          # (B, C) over the 16 patch tokens
    assert torch.allclose(got, (0.5 - a.mean(0)).pow(2).sum(), rtol=1e-5)
