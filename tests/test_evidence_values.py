"""Class-evidence maps checked value by value against the formula written out here (not only their sums):
E_c(h, w) = W[c]·A(h, w) / (H·W) on a plain map, E_c(h, w) = W[c]·(γ ⊙ (A(h, w) − mean_j A_j(h, w)) / σ) / (H·W)
with σ from the pooled vector behind a LayerNorm, offset b_c (+ W[c]·β); chosen classes that are not the first ones."""

import dataclasses

import pytest
import timm
import torch

from inspectnet.analysis.explain.evidence import (
    ClassEvidence,
    choose_classes,
    class_evidence,
    evidence_module,
    pooled_head,
    sums_to_logits,
)
from inspectnet.analysis.explain.pooled_map import PooledHead, pool_map
from inspectnet.core.errors import InspectnetError
from inspectnet.models.zoo import ZooModel, load_model


def _timm_zm(arch, head_name, size=64, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=5, **kwargs).eval()
    cfg = {"input_size": (3, size, size), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0,
           "interpolation": "bilinear", "crop_mode": "center"}
    return ZooModel(model=model, source="timm", arch=arch, num_classes=5, in_chans=3, data_config=cfg,
                    class_names=list("abcde"), head_name=head_name)


def _resnet():
    zm = load_model("resnet18", num_classes=6, input_size=64, seed=0)
    with torch.no_grad():
        zm.head.bias.normal_()  # a bias that is not zero: the offset is a real term
    return zm


def test_plain_map_evidence_is_the_literal_formula_for_classes_that_are_not_the_first():
    zm = _resnet()
    x = torch.randn(2, 3, 64, 64)
    ev = class_evidence(zm, x, "4,2")
    caught = []
    handle = zm.model.layer4.register_forward_hook(lambda _m, _i, out: caught.append(out.detach().double()))
    with torch.no_grad():
        logits = zm.model(x).double()
    handle.remove()
    a = caught[0]                                                   # (2, 512, 2, 2)
    w, b = zm.head.weight.detach().double(), zm.head.bias.detach().double()
    want = torch.stack([torch.einsum("j,bjhw->bhw", w[c], a) / 4 for c in (4, 2)], dim=1)
    torch.testing.assert_close(ev.maps.double(), want, rtol=1e-5, atol=1e-6)
    assert ev.classes.tolist() == [[4, 2], [4, 2]]
    torch.testing.assert_close(ev.offset.double(), b[[4, 2]].expand(2, 2), rtol=0, atol=1e-7)
    torch.testing.assert_close(ev.logits.double(), logits, rtol=1e-5, atol=1e-5)


def test_layer_norm_head_evidence_is_the_literal_formula_position_by_position():
    zm = _timm_zm("convnext_atto", "head.fc")
    norm = zm.model.head.norm
    with torch.no_grad():  # γ, β and the head's bias away from their initial 1 / 0
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.3)
        zm.head.bias.normal_()
    norm.eps = 0.25  # an eps the pooled spread does not dwarf: its place in the formula shows
    x = torch.randn(2, 3, 64, 64)
    ev = class_evidence(zm, x, "3,1")
    with torch.no_grad():
        a = zm.model.forward_features(x).double()                  # (2, 320, 2, 2)
    pooled = a.mean((2, 3))
    sigma = torch.sqrt(pooled.var(1, unbiased=False) + norm.eps)    # the pooled vector's spread, one per image
    g, beta = norm.weight.detach().double(), norm.bias.detach().double()
    w, b = zm.head.weight.detach().double(), zm.head.bias.detach().double()
    centred = a - a.mean(1, keepdim=True)
    want = torch.stack([torch.einsum("j,bjhw->bhw", w[c] * g, centred) / sigma[:, None, None] / 4 for c in (3, 1)], 1)
    torch.testing.assert_close(ev.maps.double(), want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ev.offset.double(), (b + w @ beta)[[3, 1]].expand(2, 2), rtol=1e-5, atol=1e-6)


def test_layer_norm_without_affine_terms_uses_gamma_one_and_no_shift():
    zm = _timm_zm("convnext_atto", "head.fc")
    norm = zm.model.head.norm
    norm.weight, norm.bias = None, None     # elementwise_affine=False: γ = 1, β = 0
    with torch.no_grad():
        zm.head.bias.normal_()
    x = torch.randn(1, 3, 64, 64)
    ev = class_evidence(zm, x, "all")
    with torch.no_grad():
        a = zm.model.forward_features(x).double()
    sigma = torch.sqrt(a.mean((2, 3)).var(1, unbiased=False) + norm.eps)
    want = torch.einsum("cj,bjhw->bchw", zm.head.weight.detach().double(), a - a.mean(1, keepdim=True)) / 4
    torch.testing.assert_close(ev.maps.double(), want / sigma, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ev.offset[0].double(), zm.head.bias.detach().double(), rtol=0, atol=1e-7)


def test_evidence_module_gives_the_top_class_by_default():
    zm = _resnet()
    x = torch.randn(3, 3, 64, 64)
    logits, maps, classes = ClassEvidence(zm.model, pooled_head(zm))(x)
    assert maps.shape == (3, 1, 2, 2)
    assert classes[:, 0].tolist() == logits.argmax(1).tolist()
    assert evidence_module(zm.model, pooled_head(zm))(x)[1].shape == (3, 1, 2, 2)


def test_token_grid_evidence_skips_the_prefix_tokens():
    zm = _timm_zm("vit_tiny_patch16_224", "head", img_size=64, global_pool="avg")
    with torch.no_grad():
        zm.head.bias.normal_()
    found = pooled_head(zm)
    assert found.layout == "NLC" and found.prefix_tokens == 1 and found.grid == (4, 4)
    x = torch.randn(1, 3, 64, 64)
    ev = class_evidence(zm, x, "2", pooled=found)
    with torch.no_grad():
        tokens = zm.model.forward_features(x).double()              # (1, 17, 192): class token first
    patches = tokens[:, 1:].transpose(1, 2).reshape(1, 192, 4, 4)    # row-major patch grid
    centred = patches - patches.mean(1, keepdim=True)
    norm = zm.model.fc_norm
    sigma = torch.sqrt(patches.mean((2, 3)).var(1, unbiased=False) + norm.eps)
    w = zm.head.weight.detach().double()[2] * norm.weight.detach().double()
    want = torch.einsum("j,bjhw->bhw", w, centred) / sigma / 16
    torch.testing.assert_close(ev.maps[:, 0].double(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layout,x,want", [
    ("NCHW", torch.arange(8.0).view(1, 2, 2, 2), [[1.5, 5.5]]),
    ("NHWC", torch.arange(8.0).view(1, 2, 2, 2), [[3.0, 4.0]]),
    ("NLC", torch.arange(6.0).view(1, 3, 2), [[3.0, 4.0]]),      # prefix 1: tokens (2, 3) and (4, 5)
])
def test_pool_map_averages_the_positions_of_each_layout(layout, x, want):
    assert pool_map(x, layout, prefix=1).tolist() == want


def test_choose_classes_values():
    logits = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]])
    assert choose_classes("top3", logits).tolist() == [[1, 2, 0], [0, 2, 1]]
    assert choose_classes("all", logits).tolist() == [[0, 1, 2], [0, 1, 2]]
    assert choose_classes(torch.tensor([2, 0]), logits).tolist() == [[2, 0], [2, 0]]
    assert choose_classes(torch.tensor([[1], [2]]), logits).tolist() == [[1], [2]]
    assert choose_classes([2, "b"], logits, ["a", "b", "c"]).tolist() == [[2, 1], [2, 1]]
    assert choose_classes("c, 0", logits, ["a", "b", "c"]).tolist() == [[2, 0], [2, 0]]
    for bad, match in (("top0", "top1 to top3"), ("top4", "top1 to top3"), ("3", "classes 0..2"), ("-1", "classes 0..2"),
                       ("", "chose no class"), ("d", "neither a class index")):
        with pytest.raises(InspectnetError, match=match):
            choose_classes(bad, logits, ["a", "b", "c"])
    with pytest.raises(InspectnetError, match="chose no class"):
        choose_classes(torch.tensor([[1], [2], [0]]), logits)   # three rows for two images


def test_gathered_export_head_behind_a_layer_norm_keeps_the_shift_of_the_kept_channels():
    """The export form of a slimmed head, gather(index) then Linear, behind a LayerNorm: offset b + W·β[index],
    maps W·(γ ⊙ normalised A)[index] / (H·W)."""
    import copy

    from torch import nn

    from inspectnet.models.heads import ChannelGather
    from inspectnet.models.surgery import set_submodule

    zm = _timm_zm("convnext_atto", "head.fc")
    norm = zm.model.head.norm
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.3)
    found = pooled_head(zm)
    index = torch.tensor([300, 7, 41, 199])
    fc = nn.Linear(4, 5)
    model = copy.deepcopy(zm.model).eval()
    set_submodule(model, "head.fc", nn.Sequential(ChannelGather(index), fc))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ev = ClassEvidence(model, found).evidence(x, "all")
        a = model.forward_features(x).double()
    sigma = torch.sqrt(a.mean((2, 3)).var(1, unbiased=False) + norm.eps)
    g, beta = norm.weight.detach().double(), norm.bias.detach().double()
    w, b = fc.weight.detach().double(), fc.bias.detach().double()
    normalised = (a - a.mean(1, keepdim=True)) * g[None, :, None, None] / sigma[:, None, None, None]
    want = torch.einsum("cj,bjhw->bchw", w, normalised[:, index]) / 4
    torch.testing.assert_close(ev.maps.double(), want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ev.offset[0].double(), b + w @ beta[index], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ev.maps.double().sum((2, 3)) + ev.offset.double(), ev.logits.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("logits, diff, accepted", [
    # tolerance 1e-4 of the largest |logit| plus 1e-6: 0.010001 at a largest logit of -100
    ([[-100.0, 3.0]], 0.0100, True), ([[-100.0, 3.0]], 0.0101, False),
    # logits of 0.01 (a random head): 2e-6 at most
    ([[0.01, -0.005]], 0.0000019, True), ([[0.01, -0.005]], 0.0000022, False),
    # all-zero logits: the 1e-6 floor alone, a difference equal to it still accepted
    ([[0.0, 0.0]], 0.0000009, True), ([[0.0, 0.0]], 0.000001, True), ([[0.0, 0.0]], 0.0000011, False),
])
def test_evidence_sums_are_accepted_within_a_relative_tolerance_of_the_largest_logit(logits, diff, accepted):
    want = torch.tensor(logits, dtype=torch.float64)
    total = want.clone()
    total[0, 1] += diff
    got = sums_to_logits(total, want)
    assert (got is None) == accepted
    if not accepted:
        assert got == pytest.approx(diff, rel=1e-9)


def test_classes_shared_by_every_image_give_each_image_the_literal_evidence_of_those_classes():
    zm = _resnet()
    ev = ClassEvidence(zm.model, pooled_head(zm))
    grid = torch.rand(3, 512, 2, 3, dtype=torch.float64)
    w = zm.head.weight.detach().double()
    with torch.no_grad():
        got = ev.double().maps_for(grid, torch.tensor([5, 0, 3]))
    want = torch.einsum("kj,bjhw->bkhw", w[[5, 0, 3]], grid) / 6
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


class _Upsampling(torch.nn.Module):
    """The convolution's map resized by ``scale`` (per side), then pooled into a linear head."""

    def __init__(self, scale):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.up = torch.nn.Upsample(scale_factor=scale)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.pool(self.up(self.conv(x))).flatten(1))


@pytest.mark.parametrize("scale, size, grid", [((4.0, 1.0), (4, 30), (16, 30)), ((1.0, 4.0), (30, 4), (30, 16)),
                                               ((4.0, 0.25), (4, 8), (16, 2))])
def test_an_input_smaller_than_its_evidence_map_in_either_direction_is_refused(scale, size, grid):
    torch.manual_seed(0)
    cfg = {"input_size": (3, *size), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    zm = ZooModel(model=_Upsampling(scale).eval(), source="timm", arch="upsampling", num_classes=2, in_chans=3,
                  data_config=cfg, class_names=["a", "b"], head_name="fc")
    x = torch.randn(1, 3, *size)
    with pytest.raises(InspectnetError, match=f"is {size[0]}x{size[1]} px, smaller than the {grid[0]}x{grid[1]} "):
        class_evidence(zm, x)
    assert class_evidence(zm, x, pooled=PooledHead("fc", "conv")).maps.shape == (1, 1, *size)  # a map as large


class _TwoOutputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        logits = self.fc(self.conv(x).mean((2, 3)))
        return logits, logits.detach()


def test_a_model_that_returns_more_than_one_logits_tensor_is_refused():
    cfg = {"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    zm = ZooModel(model=_TwoOutputs().eval(), source="timm", arch="two", num_classes=2, in_chans=3,
                  data_config=cfg, class_names=["a", "b"], head_name="fc")
    with pytest.raises(InspectnetError, match="does not return one logits tensor"):
        pooled_head(zm)


@pytest.mark.parametrize("arch, kwargs", [("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg",
                                                                    "img_size": 64, "depth": 1}),
                                          ("mixer_s16_224", {"img_size": 64})])
def test_token_models_without_prefix_tokens_keep_every_token_in_the_evidence(arch, kwargs):
    zm = _timm_zm(arch, "head", **kwargs)
    with torch.no_grad():
        zm.head.bias.normal_()
    found = pooled_head(zm)
    assert found.layout == "NLC" and found.prefix_tokens == 0
    x = torch.randn(2, 3, 64, 64)
    ev = class_evidence(zm, x, "0,2,4", pooled=found)
    assert ev.maps.shape == (2, 3, 4, 4)  # 16 patch tokens, none left out
    torch.testing.assert_close(ev.maps.sum((2, 3)) + ev.offset, ev.logits[:, [0, 2, 4]], rtol=1e-4, atol=1e-5)


def test_evidence_reads_the_weights_of_linear_heads_and_their_gathered_export_form_only():
    from inspectnet.analysis.explain.evidence import reads_weights_of
    from inspectnet.models.heads import ChannelGather, DecomposedLinear

    gather = ChannelGather(torch.tensor([0, 2]))
    assert reads_weights_of(torch.nn.Linear(4, 2))
    assert reads_weights_of(DecomposedLinear.from_linear(torch.nn.Linear(4, 2), torch.ones(2, 4, dtype=torch.bool)))
    assert reads_weights_of(torch.nn.Sequential(gather, torch.nn.Linear(2, 2)))
    assert not reads_weights_of(torch.nn.Sequential(gather, torch.nn.Conv2d(2, 2, 1)))
    assert not reads_weights_of(torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(4, 2)))
    assert not reads_weights_of(torch.nn.Sequential(gather, torch.nn.Linear(2, 2), torch.nn.ReLU()))
    assert not reads_weights_of(torch.nn.Conv2d(4, 2, 1))


def test_a_head_that_folds_a_map_into_one_position_is_refused_from_64_px_on_its_shorter_side():
    """VGG's ConvMlp turns the last map into one position with a 7×7 convolution: at 64 px that single
    position would carry the whole logit; below 64 px on the shorter side a one-position map is what any CNN gives."""
    zm = _timm_zm("vgg11", "head.fc", size=64)
    with pytest.raises(InspectnetError, match="folds its last multi-position map 'features'"):
        pooled_head(zm)
    oblong = dataclasses.replace(zm, data_config={**zm.data_config, "input_size": (3, 32, 96)})
    found = pooled_head(oblong)                                     # 32 px on the shorter side: accepted
    ev = class_evidence(oblong, torch.randn(1, 3, 32, 96), "0,3", pooled=found)
    torch.testing.assert_close(ev.maps.sum((2, 3)) + ev.offset, ev.logits[:, [0, 3]], rtol=1e-4, atol=1e-5)


class _Fold(torch.nn.Module):
    """A map from ``stem``, then ``fold`` (a convolution over the whole map, as VGG's ConvMlp), pooled into ``fc``."""

    def __init__(self, stem, fold):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, stem, stride=stem)
        self.fold = torch.nn.Conv2d(4, 6, fold)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.pool(self.fold(self.stem(x))).flatten(1))


@pytest.mark.parametrize("stem, fold, refused", [
    ((32, 32), (2, 2), True),    # 2×2 folded into one position
    ((64, 32), (1, 2), True),    # 1×2 (two positions) folded into one
    ((32, 32), (2, 1), False),   # 2×2 into 1×2: two positions left, a map
])
def test_a_map_folded_into_one_position_right_before_pooling_is_refused_and_two_positions_are_a_map(stem, fold, refused):
    torch.manual_seed(0)
    cfg = {"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    zm = ZooModel(model=_Fold(stem, fold).eval(), source="timm", arch="fold", num_classes=2, in_chans=3,
                  data_config=cfg, class_names=["a", "b"], head_name="fc")
    if refused:
        with pytest.raises(InspectnetError, match="folds its last multi-position map 'stem' into a single position"):
            pooled_head(zm)
    else:
        assert pooled_head(zm).map_module == "fold"


def test_an_oblong_token_grid_is_read_from_the_patch_embedding():
    """ViT at 32×64 px, 16-px patches: 2×4 patch tokens after the class token, a grid no square of tokens gives."""
    zm = _timm_zm("vit_tiny_patch16_224", "head", img_size=(32, 64), global_pool="avg", depth=1)
    zm = dataclasses.replace(zm, data_config={**zm.data_config, "input_size": (3, 32, 64)})
    with torch.no_grad():
        zm.head.bias.normal_()
    found = pooled_head(zm)
    assert (found.layout, found.prefix_tokens, found.grid) == ("NLC", 1, (2, 4))
    ev = class_evidence(zm, torch.randn(2, 3, 32, 64), "1,3", pooled=found)
    assert ev.maps.shape == (2, 2, 2, 4)
    torch.testing.assert_close(ev.maps.sum((2, 3)) + ev.offset, ev.logits[:, [1, 3]], rtol=1e-4, atol=1e-5)


class _AfterPooling(torch.nn.Module):
    """A 3×3 convolution's map, ``pool``, then ``tail`` on the pooled vector, then the linear head ``fc``."""

    def __init__(self, pool, tail):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.pool, self.tail, self.fc = pool, tail, torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.tail(self.pool(self.conv(x))).flatten(1))


def _shifted_norm():
    norm = torch.nn.BatchNorm2d(4)
    norm.running_mean.fill_(0.5)
    norm.running_var.fill_(4.0)  # statistics that move the pooled vector: not the identity of a fresh norm
    return norm


@pytest.mark.parametrize("build, reason", [
    (lambda: _AfterPooling(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Sequential(
        torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.ReLU())),
     "applies Conv2d, BatchNorm2d and ReLU after global pooling (activation after global pooling"),
    (lambda: _AfterPooling(torch.nn.AdaptiveAvgPool2d(1), _shifted_norm()),
     "applies BatchNorm2d after global pooling (a hidden layer between the pooling and classifier)"),
    (lambda: _AfterPooling(torch.nn.AdaptiveMaxPool2d(1), torch.nn.Identity()),
     "pools its last map with 'AdaptiveMaxPool2d' pooling; the sum over positions is exact only for average"),
    (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=2),
     "reads the class token, whose dependence on each patch goes through attention"),
    (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=2, global_pool="map"),
     "pools its tokens with attention"),
    (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=2, global_pool="avg",
                               pool_include_prefix=True),
     "averages the class/register tokens together with the patches"),
])
def test_a_refused_head_is_refused_for_the_reason_it_has(build, reason):
    torch.manual_seed(0)
    model = build().eval()
    head = "fc" if isinstance(model, _AfterPooling) else "head"
    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    zm = ZooModel(model=model, source="timm", arch="x", num_classes=2, in_chans=3, data_config=cfg,
                  class_names=["a", "b"], head_name=head)
    with pytest.raises(InspectnetError) as err:
        pooled_head(zm)
    assert reason in str(err.value) and "exact class-evidence maps are refused" in str(err.value)


class _TwoHeads(torch.nn.Module):
    """The classifier ``fc`` and a second head ``fc_dist`` on the same pooled, rectified map, averaged and clipped."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.act = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.ReLU()
        self.fc, self.fc_dist, self.clip = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2), torch.nn.Hardtanh(-50, 50)

    def forward(self, x):
        f = self.act(self.pool(self.conv(x)).flatten(1))
        return self.clip((self.fc(f) + self.fc_dist(f)) / 2)


def test_a_second_head_run_after_the_classifier_is_named_in_the_refusal():
    torch.manual_seed(0)
    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    zm = ZooModel(model=_TwoHeads().eval(), source="timm", arch="x", num_classes=2, in_chans=3, data_config=cfg,
                  class_names=["a", "b"], head_name="fc")
    with pytest.raises(InspectnetError, match=r"combines its classifier 'fc' with a second head run after it \(fc_dist, "
                                              r"e\.g\. a distillation head"):
        pooled_head(zm)
