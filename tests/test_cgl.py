"""Concept Group Learning plugin: the terms against a literal reference of the paper's equations
(also the equality check of the optimised implementation), P1/P2 modes, and L_s acting."""

import pytest
import torch
import torch.nn.functional as F
from inspectnet_plugins.cgl import ConceptGroupLearning
from torch import nn

from inspectnet.core.errors import InspectnetError
from inspectnet.plugins import make_plugin


class BNNet(nn.Module):
    def __init__(self, c: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(c, 2)

    def forward(self, x):
        return self.fc(self.relu(self.bn(self.conv(x))).mean((2, 3)))


class TwoConv(nn.Module):
    """Two convs without BatchNorm (ψ from a / S, Eq. 1), the second on half-size maps (or, with stride
    (2, 1), on maps as wide as the first's and half as high)."""

    def __init__(self, stride=2):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=stride)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).amax((2, 3)))


def _reference_terms(model: nn.Module, x: torch.Tensor, spec: str, P: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
    """The paper's terms computed directly and layer by layer from the conv (or BN) outputs: ψ (Eq. 1 or
    Eq. 4), L_g = Σ_l Σ_g (1/r) Σ_pairs D (Eq. 5), L_s = Σ_l mean over maps of the ψ-weighted distance
    from the centre (positions in units of the map's longer side), R_bn = Σ_l Σ_g ‖W_g‖_F (Eq. 6). In
    float64 and differentiable with respect to the model's parameters and ``P`` (default: the spec's)."""
    pairs = make_plugin(spec)  # an identically seeded instance draws the same random pairs
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    modules = dict(model.named_modules())
    order = [n for n, _ in model.named_modules()]
    outputs: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: outputs.__setitem__(n, o.clone()))
               for n in order if n]
    logits = model(x)
    for h in handles:
        h.remove()
    P1, P2 = P if P is not None else (pairs.hp["P1"], pairs.hp["P2"])
    l_g = l_s = r_bn = torch.zeros((), dtype=torch.float64)
    for name in names:
        follower = order[order.index(name) + 1 + len([n for n in order if n.startswith(name + ".")])] \
            if order.index(name) + 1 < len(order) else None
        bn = modules.get(follower)
        if isinstance(bn, nn.BatchNorm2d):
            gamma = bn.weight.double()
            gamma = torch.where(gamma >= 0, gamma.clamp_min(1e-3), gamma.clamp_max(-1e-3))
            psi = torch.sigmoid(P1 * outputs[follower].double() / gamma.view(1, -1, 1, 1) + P2)
        else:
            a = outputs[name].double()
            S = torch.stack([a[:, c].std(correction=0) for c in range(a.shape[1])]).clamp_min(1e-6)
            psi = torch.sigmoid(P1 * a / S.view(1, -1, 1, 1) + P2)
        C = psi.shape[1]
        G = pairs.hp["groups"]
        n_g = C // G
        i, j = pairs.sample_pairs(G, n_g)
        flat = psi.transpose(0, 1).flatten(1)  # ψ_i over the minibatch and space
        for g in range(G):
            pa, pb = flat[i[g]], flat[j[g]]
            diff = (pa - pb).abs().sum(1)
            l_g = l_g + (2 * diff / (pa.sum(1) + pb.sum(1) + diff)).sum() / len(i[g])
            r_bn = r_bn + modules[name].weight.double()[g * n_g:(g + 1) * n_g].norm()
        H, W = psi.shape[2:]
        ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                                indexing="ij")
        ys, xs = ys / max(H, W), xs / max(H, W)
        mass = psi.sum((2, 3), keepdim=True)
        cy, cx = (psi * ys).sum((2, 3), keepdim=True) / mass, (psi * xs).sum((2, 3), keepdim=True) / mass
        spread = (psi * ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt()).sum((2, 3)) / mass[..., 0, 0]
        if H * W > 1:  # a 1×1 map has no extent: its spread is 0, and sqrt(0) has no gradient
            l_s = l_s + spread.mean()
    hp = pairs.hp
    return {"logits": logits, "cgl_bn": hp["lam_bn"] * r_bn, "cgl_g": hp["lam_g"] * l_g, "cgl_s": hp["lam_s"] * l_s}


def _trained_looking_norms(model: nn.Module) -> None:
    """BatchNorm γ away from 1 (some negative: ψ divides by γ with its sign kept) and β away from 0: at their
    initial values the division by γ and the shift β drop out of ψ."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                sign = torch.where(torch.rand(m.num_features, generator=g) < 0.2, -1.0, 1.0)
                m.weight.copy_(sign * (0.5 + torch.rand(m.num_features, generator=g)))
                m.bias.copy_(0.5 * torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize("arch", ["resnet18", "twoconv", "tall_and_wide"])
def test_cgl_terms_equal_the_literal_equations_on_a_fixed_batch(arch):
    """Every conv of ResNet18 (BN variant, incl. the shortcut convs) or two plain convs; the optimised
    plugin's three terms equal the layer-by-layer reference on the same batch and pairs."""
    from inspectnet import load_model

    torch.manual_seed(0)
    model = load_model("resnet18", num_classes=2, in_chans=1, input_size=64).model if arch == "resnet18" \
        else TwoConv(stride=(2, 1) if arch == "tall_and_wide" else 2)
    model.train()
    _trained_looking_norms(model)
    x = torch.randn(4, 1, 64, 64)
    spec = "cgl:groups=2,lam_bn=0.5,lam_g=0.7,lam_s=0.3,P1=1.3,P2=-0.2,seed=5"
    reference = _reference_terms(model, x, spec)
    plugin = make_plugin(spec).attach(model, num_classes=2)
    if arch == "resnet18":
        assert len(plugin.convs) == 20
    logits = model(x)
    terms = plugin.loss(x, None, logits)
    plugin.detach()
    assert torch.equal(logits, reference["logits"])
    for key in ("cgl_bn", "cgl_g", "cgl_s"):
        assert terms[key].double().item() == pytest.approx(reference[key].item(), rel=1e-5), key


@pytest.mark.parametrize("arch", ["resnet18", "twoconv"])
def test_cgl_gradients_equal_autograd_through_the_literal_equations(arch):
    """The hand-written backward passes end to end: the gradients of λ_bn R_bn + λ_g L_g + λ_s L_s with
    respect to every parameter of the model (convs, BatchNorm γ and β) and to P equal autograd's
    through the literal transcription (float64, from the same forward pass of the float32 model)."""
    from inspectnet import load_model

    torch.manual_seed(0)
    # 32×32 input: ResNet18's maps are 8×8, 4×4, 2×2 and 1×1 (stacks of several layers, L_s 0 on 1×1)
    model = load_model("resnet18", num_classes=2, in_chans=1, input_size=32).model if arch == "resnet18" \
        else TwoConv()
    model.train()
    with torch.no_grad():  # β ≠ 0: ψ = σ(P1·(BN(a) − β)/γ + P1·β/γ + P2) then depends on γ (at β = 0 it does not)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
    x = torch.randn(3, 1, 32, 32)
    spec = "cgl:groups=2,lam_bn=0.5,lam_g=0.7,lam_s=0.3,P1=1.3,P2=-0.2,seed=5"
    names, params = zip(*model.named_parameters())
    P = torch.tensor([1.3, -0.2], dtype=torch.float64, requires_grad=True)
    reference = _reference_terms(model, x, spec, P)
    expected = torch.autograd.grad(reference["cgl_bn"] + reference["cgl_g"] + reference["cgl_s"],
                                   [*params, P], allow_unused=True)
    plugin = make_plugin(spec).attach(model, num_classes=2)
    model(x)
    got = torch.autograd.grad(sum(plugin.loss(x, None, None).values()), [*params, plugin.P], allow_unused=True)
    plugin.detach()
    scale = max(float(want.abs().max()) for want in expected if want is not None)
    checked = 0
    for name, want, have in zip([*names, "P"], expected, got):
        assert (want is None) == (have is None), name
        if want is not None:
            assert torch.allclose(have.double(), want.double(), rtol=1e-3, atol=1e-6 * scale), name
            checked += float(want.abs().max()) > 1e-4 * scale
    assert checked >= (60 if arch == "resnet18" else 4)  # every conv weight, γ and β, and P


def test_cgl_group_distance_is_one_minus_iou_and_spatial_loss():
    plugin = make_plugin("cgl:groups=1,pairs=4")
    # two binary maps per group (1 group of 2 filters): |A|=2, |B|=2, |A∩B|=1 -> 1 - IoU = 2/3
    psi = torch.zeros(1, 2, 2, 2)
    psi[0, 0, 0, 0] = psi[0, 0, 0, 1] = 1
    psi[0, 1, 0, 1] = psi[0, 1, 1, 1] = 1
    assert torch.allclose(plugin.group_loss(psi, 1, 2), torch.tensor(2 / 3))
    # two groups: Eq. 5 sums their (1/r)-averaged distances (identical maps: 0; disjoint maps: 1)
    two = torch.zeros(1, 4, 2, 2)
    two[0, :2, 0, 0] = 1
    two[0, 2, 0, 0], two[0, 3, 1, 1] = 1, 1
    assert torch.allclose(plugin.group_loss(two, 2, 2), torch.tensor(1.0))
    # spatial loss: mass at (0,0) and (0,2) of a 3×3 map -> centre (0,1), mean distance 1 pixel = 1/3 side
    m = torch.zeros(1, 1, 3, 3)
    m[0, 0, 0, 0] = m[0, 0, 0, 2] = 1
    assert torch.allclose(ConceptGroupLearning.spatial_loss(m), torch.tensor(1 / 3))
    assert ConceptGroupLearning.spatial_loss(torch.ones(1, 1, 64, 64)).item() == pytest.approx(0.3826, abs=2e-3)


def test_cgl_block_norm_general_pq_leftover_and_beta():
    model = BNNet(c=7)
    plugin = make_plugin("cgl:groups=2,free=1,p=1,q=2,layers=conv").attach(model, num_classes=2)
    assert plugin.split["conv"] == (2, 3, 1)  # 7 filters: 2 groups of 3, 1 free filter (explicit)
    w = model.conv.weight.detach().flatten(1)
    blocks = [w[0:3].abs().sum(), w[3:6].abs().sum(), w[6].abs().sum()]  # free filter = singleton block
    assert torch.allclose(plugin.block_norm("conv"), torch.stack(blocks).norm(p=2))
    assert plugin.group_relevance()["conv"] == pytest.approx([w[0:3].norm().item(), w[3:6].norm().item()])
    # block norm replaces weight decay on the regularized weights
    assert [id(p) for p in plugin.decay_exempt()] == [id(model.conv.weight)]
    plugin.detach()
    with pytest.raises(InspectnetError, match="exceed the 7 filters"):
        make_plugin("cgl:groups=7,free=1,layers=conv").attach(model, num_classes=2)


def test_cgl_bn_variant_finite_with_inplace_relu_and_seeded_pairs():
    torch.manual_seed(0)
    model = BNNet()
    x = torch.randn(4, 1, 6, 6)
    losses = []
    for _ in range(2):
        plugin = make_plugin("cgl:groups=2,layers=conv,seed=3").attach(model, num_classes=2)
        with torch.no_grad():
            model.bn.weight[0] = 0.0  # γ = 0 must not produce inf/nan
        model(x)
        terms = plugin.loss(x, None, None)
        sum(terms.values()).backward()
        assert all(torch.isfinite(v) for v in terms.values())
        losses.append(terms["cgl_g"].item())
        state = plugin.state_dict()
        plugin.detach()
    assert losses[0] == losses[1]  # same seed -> same random pairs
    assert set(state) == {"P", "generator"}


def test_cgl_plain_variant_unaffected_by_an_inplace_relu_after_the_conv():
    """ψ's backward keeps its own tensors: a ReLU(inplace=True) right after the conv (no BatchNorm)
    changes neither the terms nor the conv's gradient."""
    grads = []
    for inplace in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.Flatten(), nn.LazyLinear(2))
        plugin = make_plugin("cgl:groups=2,layers=0,lam_g=1,lam_s=1").attach(model, num_classes=2)
        x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
        logits = model(x)
        sum(plugin.loss(x, None, logits).values()).backward()
        grads.append(model[0].weight.grad.clone())
        plugin.detach()
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


def _train_cgl(spec: str, steps: int, x: torch.Tensor) -> tuple[ConceptGroupLearning, list[dict]]:
    """Adam on the CGL terms alone (no task loss) for ``steps`` steps; the epoch log after each step."""
    torch.manual_seed(0)
    model = TwoConv()
    plugin = make_plugin(spec).attach(model, num_classes=2)
    opt = torch.optim.Adam(list(model.parameters()) + plugin.parameters(), lr=0.05)
    logs = []
    for _ in range(steps):
        plugin.epoch_begin(0, model)
        model(x)
        loss = sum(plugin.loss(x, None, None).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        logs.append(plugin.epoch_end(0))
    plugin.detach()
    return plugin, logs


def test_cgl_learned_P_drifts_along_the_degenerate_direction_bounded_and_fixed_P_do_not():
    """A constant ψ = σ(P2) zeroes L_g without aligning filters, so dL_g/dP1 > 0 and learned P1 falls;
    the log shows it (P1 and the collapsing spread of ψ); P=bounded keeps P1 ≥ P1_min, P=fixed keeps P1, P2."""
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = TwoConv()
    plugin = make_plugin("cgl:groups=2,lam_g=1,lam_s=0,lam_bn=0").attach(model, num_classes=2)
    model(x)
    plugin.loss(x, None, None)["cgl_g"].backward()
    assert plugin.P.grad[0] > 0
    plugin.detach()
    spec = "cgl:groups=2,lam_g=1,lam_s=0,lam_bn=0,P1_min=0.9"
    learned = _train_cgl(spec, 20, x)[1]
    bounded = _train_cgl(spec + ",P=bounded", 20, x)[1]
    fixed_plugin, fixed = _train_cgl(spec + ",P=fixed", 20, x)
    assert {"P1", "P2", "L_g", "L_s", "psi_std"} <= set(learned[-1])
    assert learned[-1]["P1"] < 0.5 and learned[-1]["psi_std"] < 0.5 * learned[0]["psi_std"]
    assert min(log["P1"] for log in bounded) >= 0.9 - 1e-6
    assert (fixed[-1]["P1"], fixed[-1]["P2"]) == (1.0, 0.0) and fixed_plugin.parameters() == []


def test_cgl_spatial_loss_acts_it_concentrates_psi():
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    logs = _train_cgl("cgl:groups=2,lam_g=0,lam_s=1,lam_bn=0", 30, x)[1]
    assert logs[-1]["L_s"] < 0.6 * logs[0]["L_s"]
    assert logs[0]["L_s"] > 0.5  # two layers of near-uniform ψ to start with (≈ 0.38 each)


def test_cgl_refuses_non_conv_layers_and_warns_on_1x1_maps():
    model = TwoConv()
    with pytest.raises(InspectnetError, match="'fc' is a Linear, not a Conv2d"):
        make_plugin("cgl:layers=fc").attach(model, num_classes=2)
    plugin = make_plugin("cgl:groups=2,layers=conv2").attach(model, num_classes=2)
    model(torch.rand(2, 1, 2, 2))
    with pytest.warns(UserWarning, match="1×1 maps"):
        plugin.loss(None, None, None)
    plugin.detach()


def test_cgl_fused_terms_and_sigmoid_gradients_match_autograd():
    """The hand-written backward passes (the speed-up) against numerical gradients (float64): both terms
    of a stack of two layers together and each alone, duplicate pairs, and ψ of the BN variant."""
    from inspectnet_plugins.cgl import _FilterSigmoid, _RowL2, _ShiftedSigmoid, _StackTerms

    g = torch.Generator().manual_seed(0)
    first = (torch.rand(3, 4, 2, 3, dtype=torch.float64, generator=g) + 0.05).requires_grad_()
    second = (torch.rand(3, 2, 2, 3, dtype=torch.float64, generator=g) + 0.05).requires_grad_()
    i, j = torch.tensor([0, 1, 3, 4, 0, 2, 1]), torch.tensor([2, 0, 1, 5, 3, 0, 0])  # (0, 2) drawn twice
    weight = torch.rand(7, dtype=torch.float64, generator=g)
    map_weight = torch.rand(6, dtype=torch.float64, generator=g)
    for pairs, per_map in (((i, j, weight), map_weight), ((i, j, weight), None), ((None,) * 3, map_weight)):
        assert torch.autograd.gradcheck(
            lambda a, b, pairs=pairs, per_map=per_map: torch.stack(_StackTerms.apply(*pairs, per_map, a, b)),
            (first, second))
    maps = (torch.rand(2, 3, 4, 5, dtype=torch.float64, generator=g) + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(lambda m: _StackTerms.apply(None, None, None, map_weight[:3], m)[1], (maps,))
    x = torch.randn(3, 4, 2, 5, dtype=torch.float64, generator=g).requires_grad_()
    scale = torch.randn(4, dtype=torch.float64, generator=g).requires_grad_()
    shift = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_ShiftedSigmoid.apply, (x, scale, shift))
    rows = torch.randn(3, 7, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(_RowL2.apply, (rows,))
    conv_out = torch.randn(3, 4, 2, 5, dtype=torch.float64, generator=g)
    conv_out[:, 3] = 0.5  # a filter with no spread: S clamped, no gradient through it
    P = torch.tensor([1.3, -0.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_FilterSigmoid.apply, (conv_out.requires_grad_(), P))


def test_cgl_pair_distances_in_image_blocks_equal_one_piece():
    """Maps large enough for L_g to be cut into several blocks of images: value and gradient as autograd's
    through the whole minibatch at once, also where ψ_i = ψ_j (|ψ_i − ψ_j| has gradient 0 there)."""
    from inspectnet_plugins.cgl import _image_blocks, _StackTerms

    g = torch.Generator().manual_seed(0)
    psi = torch.rand(4, 40, 20, 15, dtype=torch.float64, generator=g)
    psi[:, 5, :5] = psi[:, 4, :5]  # ties
    psi.requires_grad_()
    i, j = torch.randint(0, 40, (600,), generator=g), torch.randint(0, 40, (600,), generator=g)
    j = torch.where(i == j, (j + 1) % 40, j)
    i[:3], j[:3] = torch.tensor([4, 5, 4]), torch.tensor([5, 4, 5])
    weight = torch.rand(600, dtype=torch.float64, generator=g)
    pairs = len(torch.unique(torch.minimum(i, j) * 40 + torch.maximum(i, j)))
    assert len(_image_blocks((40, 4, 300), pairs)) > 1
    _StackTerms.apply(i, j, weight, None, psi)[0].backward()
    blocked = psi.grad.clone()
    psi.grad = None
    flat = psi.transpose(0, 1).flatten(1)
    diff = (flat[i] - flat[j]).abs().sum(1)
    reference = (weight * 2 * diff / (flat[i].sum(1) + flat[j].sum(1) + diff)).sum()
    reference.backward()
    assert torch.allclose(_StackTerms.apply(i, j, weight, None, psi)[0], reference)
    assert torch.allclose(blocked, psi.grad)


def test_cgl_pooled_std_is_the_sample_std_of_all_values_together():
    from inspectnet_plugins.cgl import _pooled_std

    g = torch.Generator().manual_seed(0)
    parts = [torch.rand(2, 3, 4, 4, generator=g), torch.randn(5, 7, generator=g) * 3 + 1]
    want = torch.cat([t.flatten() for t in parts]).double().std()  # Bessel's n − 1
    assert float(_pooled_std(parts)) == pytest.approx(float(want), rel=1e-9)


def test_cgl_row_norm_gradient_is_zero_on_an_all_zero_row():
    from inspectnet_plugins.cgl import _RowL2

    rows = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    _RowL2.apply(rows).sum().backward()
    assert torch.allclose(rows.grad[0], torch.tensor([0.6, 0.8], dtype=torch.float64), rtol=1e-12, atol=0)
    assert torch.equal(rows.grad[1], torch.zeros(2, dtype=torch.float64))


def test_cgl_filter_sigmoid_passes_no_gradient_through_a_std_below_its_clamp():
    """A near-constant filter (std 1e-7 < 1e-6): S is the clamp, a constant, as in autograd through
    ψ = σ(P1 · a / max(std, 1e-6) + P2); a small P1 leaves the gradient through S nowhere to hide."""
    from inspectnet_plugins.cgl import _FilterSigmoid

    g = torch.Generator().manual_seed(0)
    a = (0.5 + 1e-7 * torch.randn(3, 2, 2, 5, dtype=torch.float64, generator=g)).requires_grad_()
    P = torch.tensor([1e-6, 0.3], dtype=torch.float64, requires_grad=True)
    weights = torch.rand(3, 2, 2, 5, dtype=torch.float64, generator=g)
    (_FilterSigmoid.apply(a, P) * weights).sum().backward()
    got_a, got_P = a.grad.clone(), P.grad.clone()
    a.grad = P.grad = None
    std = a.std(dim=(0, 2, 3), unbiased=False, keepdim=True).clamp_min(1e-6)
    (torch.sigmoid(P[0] * a / std + P[1]) * weights).sum().backward()
    assert torch.allclose(got_a, a.grad, rtol=1e-9, atol=0) and torch.allclose(got_P, P.grad, rtol=1e-9, atol=0)


def test_cgl_shifted_sigmoid_gives_the_scale_gradient_when_only_the_scale_needs_one():
    from inspectnet_plugins.cgl import _ShiftedSigmoid

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, generator=g)
    scale = torch.randn(3, dtype=torch.float64, generator=g).requires_grad_()
    shift = torch.tensor(0.2, dtype=torch.float64)  # fixed P2
    _ShiftedSigmoid.apply(x, scale, shift).sum().backward()
    want = torch.autograd.grad(torch.sigmoid(x * scale.view(1, -1, 1, 1) + shift).sum(), scale)[0]
    assert scale.grad is not None and torch.allclose(scale.grad, want)


def test_cgl_spatial_loss_counts_maps_of_two_positions():
    from inspectnet_plugins.cgl import _StackTerms

    psi = torch.tensor([[[[0.9, 0.1]], [[0.5, 0.5]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    # positions 0 and 1/2 (units of the longer side): spread of (0.9, 0.1) is 2·0.9·0.1·(1/2) = 0.09, of a
    # uniform pair 1/4
    l_s = _StackTerms.apply(None, None, None, torch.tensor([1.0, 1.0], dtype=torch.float64), psi)[1]
    assert float(l_s) == pytest.approx(0.09 + 0.25)


def test_cgl_image_blocks_partition_the_batch_whatever_the_pair_count():
    from inspectnet_plugins.cgl import _image_blocks

    for shape, pairs in (((40, 4, 300), 590), ((8, 64, 1), 3), ((16, 9, 400), 5000), ((4, 5, 1024), 10 ** 6)):
        blocks = _image_blocks(shape, pairs)
        covered = [b for s in blocks for b in range(shape[1])[s]]
        assert covered == list(range(shape[1])) and all(s.stop > s.start for s in blocks), (shape, pairs)


def test_cgl_group_distance_of_faint_and_of_all_zero_maps_follows_the_literal_formula():
    """ψ with masses far below 1 (the denominator is not clamped there) and a pair of all-zero maps (0/0:
    D = 0 with no gradient, as through max(·, 1e-12) in autograd)."""
    from inspectnet_plugins.cgl import _StackTerms

    g = torch.Generator().manual_seed(2)
    psi = 1e-3 * torch.rand(2, 4, 1, 3, dtype=torch.float64, generator=g)
    psi[:, 2:] = 0.0
    psi.requires_grad_()
    i, j, weight = torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([0.7, 1.3], dtype=torch.float64)
    _StackTerms.apply(i, j, weight, None, psi)[0].backward()
    got = psi.grad.clone()
    psi.grad = None
    flat = psi.transpose(0, 1).flatten(1)
    diff = (flat[i] - flat[j]).abs().sum(1)
    reference = (weight * 2 * diff / (flat[i].sum(1) + flat[j].sum(1) + diff).clamp_min(1e-12)).sum()
    reference.backward()
    value = _StackTerms.apply(i, j, weight, None, psi.detach())[0]
    assert float(value) == pytest.approx(float(reference.detach()), rel=1e-12)
    assert torch.allclose(got, psi.grad, rtol=1e-9, atol=0) and torch.equal(got[:, 2:], torch.zeros_like(got[:, 2:]))


def test_cgl_default_hyperparameters_are_the_documented_ones():
    """Every user's run starts from these (`inspectnet plugins cgl` lists them): a change must be deliberate."""
    defaults = {h.name: h.default for h in ConceptGroupLearning.hparams}
    assert defaults == {"layers": "all", "groups": 8, "free": 0, "lam_bn": 1e-4, "lam_g": 0.05, "lam_s": 0.05,
                        "p": 2.0, "q": 1.0, "bn": "auto", "pairs": 3.0, "P1": 1.0, "P2": 0.0, "P": "learned",
                        "P1_min": 0.5, "seed": 0}


def test_cgl_groups_may_use_every_filter_and_no_more_and_pairs_may_be_fractional():
    plugin = make_plugin("cgl:groups=6,layers=conv1,pairs=0.5").attach(TwoConv(), num_classes=2)  # 6 groups, 6 filters
    assert plugin.split["conv1"] == (6, 1, 0)
    plugin.detach()
    with pytest.raises(InspectnetError, match="groups=6 \\+ free=1 exceed the 6 filters"):
        make_plugin("cgl:groups=6,free=1,layers=conv1").attach(TwoConv(), num_classes=2)


def test_cgl_bn_variant_clamps_a_zero_or_tiny_gamma_away_from_zero_keeping_its_sign():
    model = BNNet(c=4)
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.0, -1e-4, 0.5, -0.7]))
        model.bn.bias.copy_(torch.tensor([0.3, 0.0, -0.1, 0.4]))  # β ≠ 0: a zero γ's channel is not all zero
    plugin = make_plugin("cgl:groups=2,layers=conv,P1=1.3,P2=-0.2").attach(model, num_classes=2)
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    captured = {}
    model.bn.register_forward_hook(lambda _m, _i, out: captured.__setitem__("bn", out.detach().clone()))
    model(x)
    safe = torch.tensor([1e-3, -1e-3, 0.5, -0.7]).view(1, -1, 1, 1)
    assert torch.allclose(plugin._psi["conv"], torch.sigmoid(1.3 * captured["bn"] / safe - 0.2), rtol=1e-5)
    plugin.detach()


def test_cgl_pairs_are_r_per_group_of_distinct_filters_drawn_from_every_filter():
    plugin = make_plugin("cgl:pairs=0.25,seed=3")
    i, j = plugin.sample_pairs(2, 4)
    assert i.shape == j.shape == (2, 1)  # r = max(1, round(0.25 · 4)) = 1
    plugin = make_plugin("cgl:pairs=3,seed=3")
    i, j = plugin.sample_pairs(3, 5)
    assert i.shape == (3, 15) and (i != j).all()
    base = torch.arange(3).view(3, 1) * 5
    local_i, local_j = i - base, j - base
    assert local_i.min() >= 0 and local_i.max() <= 4 and local_j.min() >= 0 and local_j.max() <= 4
    many = make_plugin("cgl:pairs=40,seed=0").sample_pairs(1, 5)[0]
    assert set(many.flatten().tolist()) == set(range(5))  # the first filter of a group is drawn too


def test_cgl_block_norm_alone_is_lam_bn_times_the_sum_of_group_norms():
    model = BNNet(c=6)
    plugin = make_plugin("cgl:groups=3,layers=conv,lam_bn=0.25,lam_g=0,lam_s=0").attach(model, num_classes=2)
    terms = plugin.loss(torch.zeros(1, 1, 4, 4), None, None)
    w = model.conv.weight.detach().flatten(1)
    assert set(terms) == {"cgl_bn"}
    groups = sum(w[k:k + 2].norm() for k in (0, 2, 4))  # R_bn with p = 2, q = 1: the sum of the group norms
    assert float(terms["cgl_bn"].detach()) == pytest.approx(0.25 * float(groups), rel=1e-6)
    plugin.detach()
    cubic = make_plugin("cgl:groups=3,layers=conv,p=3,q=1,lam_g=0,lam_s=0").attach(model, num_classes=2)
    want = sum(w[k:k + 2].abs().pow(3).sum().pow(1 / 3) for k in (0, 2, 4))
    assert float(cubic.block_norm("conv").detach()) == pytest.approx(float(want), rel=1e-6)
    cubic.detach()


def _steps(plugin, model, n, size=8):
    g = torch.Generator().manual_seed(1)
    values = []
    for _ in range(n):
        model(torch.randn(2, 1, size, size, generator=g))
        values.append({k: float(v.detach()) for k, v in plugin.loss(None, None, None).items()})
    return values


def test_cgl_epoch_log_averages_the_steps_and_logs_zero_for_a_term_switched_off():
    model = TwoConv()
    plugin = make_plugin("cgl:groups=2,lam_g=0,lam_s=1,seed=1").attach(model, num_classes=2)  # conv1: 3 per group
    plugin.epoch_begin(0, model)
    steps = _steps(plugin, model, 9)
    samples = list(plugin._spread)  # the spread of ψ is sampled every 8 steps: steps 0 and 8
    log = plugin.epoch_end(0)
    assert log["L_g"] == 0.0 and log["L_s"] == pytest.approx(sum(s["cgl_s"] for s in steps) / 9, rel=1e-6)
    assert len(samples) == 2 and log["psi_std"] == pytest.approx(sum(samples) / 2)
    plugin.detach()
    plugin = make_plugin("cgl:groups=4,layers=conv2,lam_g=1,lam_s=0,seed=1").attach(model, num_classes=2)
    plugin.epoch_begin(0, model)
    steps = _steps(plugin, model, 2)  # conv2: 8 filters in 4 groups of 2, the smallest group that has pairs
    log = plugin.epoch_end(0)
    assert log["L_s"] == 0.0 and log["L_g"] > 0
    assert log["L_g"] == pytest.approx(sum(s["cgl_g"] for s in steps) / 2, rel=1e-6)
    plugin.detach()


def test_cgl_warns_once_about_one_by_one_maps_and_never_about_larger_square_ones():
    import warnings

    model = TwoConv()
    plugin = make_plugin("cgl:groups=2").attach(model, num_classes=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _steps(plugin, model, 1, size=4)  # 4×4 and 2×2 maps: square, not flat
    with pytest.warns(UserWarning, match="1×1 maps") as caught:
        _steps(plugin, model, 2, size=1)
    assert len([w for w in caught if "1×1 maps" in str(w.message)]) == 1
    plugin.detach()


def test_cgl_state_dict_round_trip_restores_p_and_the_pair_generator():
    a = make_plugin("cgl:groups=2,seed=7").attach(TwoConv(), num_classes=2)
    with torch.no_grad():
        a.P.copy_(torch.tensor([1.7, -0.4]))
    a.sample_pairs(2, 3)  # advance the generator
    state = a.state_dict()
    b = make_plugin("cgl:groups=2,seed=0").attach(TwoConv(), num_classes=2)
    b.load_state_dict(state)
    assert torch.equal(b.P.detach(), a.P.detach())
    assert all(torch.equal(x, y) for x, y in zip(b.sample_pairs(2, 3), a.sample_pairs(2, 3)))
