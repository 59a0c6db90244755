"""Plugin contract, registry (entry points) and the EBP / k-WTA / SAN / baseline plugins."""

import sys
import textwrap

import pytest
import torch
from torch import nn

from inspectnet.errors import InspectnetError
from inspectnet.plugins import (Plugin, available_plugins, describe_plugins, hoyer, make_plugin,
                                parse_plugin_spec)

FIRST_PARTY = {"ebp", "kwta", "san"}


class TinyNet(nn.Module):
    def __init__(self, c: int = 6, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, c, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_registry_lists_first_party_plugins_with_papers_and_defaults():
    plugins = available_plugins()
    assert FIRST_PARTY <= set(plugins)
    desc = {d["name"]: d for d in describe_plugins()}
    ebp = {h["name"]: h["default"] for h in desc["ebp"]["hyperparameters"]}
    assert ebp["K"] == 25 and ebp["lam"] == 1e-3
    assert "Elite BackProp" in desc["ebp"]["paper"]
    assert plugins["ebp"].__module__ == "inspectnet_plugins.ebp"


def test_out_of_tree_plugin_is_found_through_entry_points(tmp_path, monkeypatch):
    (tmp_path / "myreg.py").write_text(textwrap.dedent("""
        from inspectnet.plugins import HParam, Plugin
        class L1Reg(Plugin):
            name = "l1act"
            paper = "none"
            hparams = (HParam("lam", "float", 0.5, "strength", low=0.0),)
    """))
    dist = tmp_path / "myreg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myreg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text('[inspectnet.plugins]\nl1act = myreg:L1Reg\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = make_plugin("l1act:lam=0.25")
    assert type(plugin).__name__ == "L1Reg" and plugin.hp == {"lam": 0.25}
    assert "l1act" in available_plugins()
    sys.modules.pop("myreg", None)


def test_spec_parsing_and_bad_hyperparameters():
    assert parse_plugin_spec(" ebp:K=3, lam=0.1 ").values == {"K": "3", "lam": "0.1"}
    with pytest.raises(InspectnetError, match="valid: K, lam, layer"):
        make_plugin("ebp:Q=1")
    with pytest.raises(InspectnetError, match="did you mean ebp"):
        make_plugin("ebpp")
    with pytest.raises(InspectnetError, match="not a valid int"):
        make_plugin("ebp:K=2.5")
    with pytest.raises(InspectnetError, match="below its minimum"):
        make_plugin("ebp:lam=-1")
    with pytest.raises(InspectnetError, match="not one of"):
        make_plugin("ebp:variant=some")
    with pytest.raises(InspectnetError, match="not key=value"):
        parse_plugin_spec("ebp:K")


@pytest.mark.parametrize("spec", ["ebp:K=2,layer=conv", "kwta:k=0.3,layer=conv", "san:activation=peaks,layer=conv"])
def test_detach_leaves_model_exactly_as_before(spec):
    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = model(x)
    plugin = make_plugin(spec).attach(model, num_classes=3)
    assert _hooks(model) == 1
    logits = model(x)
    plugin.loss(x, y, logits)
    plugin.detach()
    assert _hooks(model) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), ref)


def test_bad_layer_fails_and_leaves_no_hook():
    model = TinyNet()
    with pytest.raises(InspectnetError, match="plugin ebp: unknown layer"):
        make_plugin("ebp:layer=conv9").attach(model, num_classes=3)
    assert _hooks(model) == 0


def test_ebp_penalty_matches_hand_computation():
    """D accumulates per-class |F| means in float64; non-elites weigh D_j / D_(K), elites 0."""
    model = nn.Sequential(nn.Identity())
    plugin = make_plugin("ebp:K=2,lam=1.0,layer=0").attach(model, num_classes=2)
    # activations (B=3, C=4, 1x1): A = |x| spatial mean
    x = torch.tensor([[1.0, -4, 2, 0.5], [3, 1, 0, 1], [0, 0, 2, 6]]).view(3, 4, 1, 1)
    y = torch.tensor([0, 0, 1])
    model(x)
    terms = plugin.loss(x, y, None)
    D0 = torch.tensor([4.0, 5, 2, 1.5])  # class 0: rows 0 + 1 of |x|
    D1 = torch.tensor([0.0, 0, 2, 6])
    assert torch.equal(plugin.D, torch.stack([D0, D1]).double())
    # class 0 elites {1, 0}, D_(2) = 4: weights (0, 0, 2/4, 1.5/4); class 1 elites {3, 2}: D_(2) = 2, weights (0, 0, 0, 0)
    w0 = torch.tensor([0, 0, 0.5, 0.375])
    expected = ((w0 * x[0].flatten().abs()).sum() + (w0 * x[1].flatten().abs()).sum() + 0.0) / 3
    assert torch.allclose(terms["ebp"], expected)
    assert sorted(plugin.elites()[0]) == [0, 1]
    # penalize-all variant: 1 - p = D_j / D_(1) for every filter, elites included
    plugin.detach()
    plugin = make_plugin("ebp:K=2,lam=1.0,layer=0,variant=all").attach(model, num_classes=2)
    model(x)
    plugin.loss(x, y, None)
    assert torch.allclose(plugin.penalty_weights()[0], (D0 / 5).double())


def test_ebp_state_roundtrip_and_k_too_large():
    model = TinyNet(c=4)
    plugin = make_plugin("ebp:K=5,layer=conv").attach(model, num_classes=3)
    model(torch.randn(2, 1, 8, 8))
    with pytest.raises(InspectnetError, match="K=5 is larger than the 4 filters"):
        plugin.loss(None, torch.tensor([0, 1]), None)
    plugin.detach()
    a = make_plugin("ebp:K=2,layer=conv").attach(model, num_classes=3)
    model(torch.randn(2, 1, 8, 8))
    a.loss(None, torch.tensor([0, 2]), None)
    b = make_plugin("ebp:K=2,layer=conv")
    b.load_state_dict(a.state_dict())
    assert b.D.dtype == torch.float64 and torch.equal(a.D, b.D)


def test_ebp_gradient_reaches_non_elite_filters_only():
    model = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0, 0.1]).view(3, 1, 1, 1))
    plugin = make_plugin("ebp:K=2,lam=1.0,layer=0").attach(model, num_classes=1)
    x = torch.ones(2, 1, 2, 2)
    model(x)
    plugin.loss(x, torch.tensor([0, 0]), None)["ebp"].backward()
    g = model[0].weight.grad.flatten()
    assert g[0] == 0 and g[1] == 0 and g[2] > 0  # filters 0 and 1 are the elites


def test_kwta_ties_pass():
    from inspectnet_plugins.kwta import kwta

    x = torch.tensor([[5.0, 2, 2, 1, 0, 2]])
    assert kwta(x, 0.34).tolist() == [[5.0, 2, 2, 0, 0, 2]]  # ceil(0.34*6)=3 -> threshold 2, all 2s pass
    assert kwta(torch.arange(8.0).view(1, 2, 2, 2), 0.25).flatten().tolist() == [0, 0, 0, 0, 0, 0, 6, 7]


def test_hoyer_extremes():
    h = hoyer(torch.tensor([[0.0, 0, 3, 0], [1, 1, 1, 1], [0, 0, 0, 0]]))
    assert h.tolist() == [1.0, 0.0, 1.0]


def test_plugin_base_contract_defaults():
    class Noop(Plugin):
        name = "noop"

    p = Noop()
    assert p.loss(None, None, None) == {} and p.state_dict() == {} and p.spec() == "noop:"
