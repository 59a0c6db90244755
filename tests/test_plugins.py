"""Plugin contract, registry (entry points) and the EBP / k-WTA / SAN / baseline plugins."""

import copy
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from inspectnet.analysis.sparsity import sparsity_metrics
from inspectnet.core.errors import InspectnetError
from inspectnet.plugins import (
    Plugin,
    available_plugins,
    describe_plugins,
    make_plugin,
    parse_plugin_spec,
    plugin_names,
)
from inspectnet.training.hoyer_log import HoyerLog

FIRST_PARTY = {"ebp", "kwta", "san", "cgl", "dutycycle", "easr", "sparseout"}


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


def test_ebp_penalty_of_later_classes_matches_hand_computation():
    """Samples of classes 2 and 1 only (class 0 has none): each sample is weighed by its own class's row."""
    model = nn.Sequential(nn.Identity())
    plugin = make_plugin("ebp:K=1,lam=1.0,layer=0").attach(model, num_classes=3)
    x = torch.tensor([[1.0, -3, 0, 2], [2, 1, 0, -4], [0, 5, -1, 1]]).view(3, 4, 1, 1)
    y = torch.tensor([2, 2, 1])
    model(x)
    terms = plugin.loss(x, y, None)
    # D2 = (3, 4, 0, 6): elite {3}, D_(1) = 6, weights (1/2, 2/3, 0, 0); D1 = (0, 5, 1, 1): elite {1}, (0, 0, 1/5, 1/5)
    assert torch.equal(plugin.D, torch.tensor([[0.0, 0, 0, 0], [0, 5, 1, 1], [3, 4, 0, 6]], dtype=torch.float64))
    assert plugin.elites()[1:] == [[1], [3]]
    # per sample: 1/2·1 + 2/3·3 = 5/2, 1/2·2 + 2/3·1 = 5/3, 1/5·1 + 1/5·1 = 2/5
    assert terms["ebp"].item() == pytest.approx((5 / 2 + 5 / 3 + 2 / 5) / 3, rel=1e-6)


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


def _scaled_before_norm(model: nn.Module, scale: float) -> nn.Module:
    """A float64 copy with every conv that feeds a normalisation scaled: in train mode (batch statistics;
    eps made negligible) the same function."""
    from inspectnet.models.layers import following_normalisation

    model = copy.deepcopy(model).double()
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and following_normalisation(model, name):
                m.weight.mul_(scale)
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-12
    return model


def test_ebp_default_layer_penalty_is_not_removable_by_rescaling_weights():
    """The default layer is post-activation (ResNet: layer4), so scaling the pre-BN convs by 0.1, which
    leaves the logits unchanged, leaves the penalty unchanged too; a pre-BN conv is refused."""
    from inspectnet import load_model

    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=3, in_chans=1, input_size=32)
    x, y = torch.randn(8, 1, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    runs = []
    for scale in (1.0, 0.1):
        model = _scaled_before_norm(zm.model, scale).train()
        plugin = make_plugin("ebp:K=4,lam=1").attach(model, num_classes=3, head_name=zm.head_name)
        logits = model(x)
        runs.append((plugin.layer_name, logits, plugin.loss(x, y, logits)["ebp"]))
        plugin.detach()
    (layer, logits1, pen1), (_, logits01, pen01) = runs
    assert layer == "layer4"
    assert torch.allclose(logits1, logits01, atol=1e-6)
    assert pen1 > 0 and torch.allclose(pen1, pen01, rtol=1e-6)
    with pytest.raises(InspectnetError, match="'layer4.1.conv2' is a Conv2d followed by 'layer4.1.bn2'"):
        make_plugin("ebp:layer=layer4.1.conv2").attach(zm.model, num_classes=3)
    with pytest.raises(InspectnetError, match="followed by"):
        make_plugin("easr:layer=last_conv").attach(zm.model, num_classes=3)
    with pytest.warns(UserWarning, match="shifts the zeros"):
        make_plugin("kwta:layer=layer4.1.conv2").attach(zm.model, num_classes=3).detach()
    assert _hooks(zm.model) == 0


def test_kwta_ties_pass():
    from inspectnet_plugins.kwta import kwta

    x = torch.tensor([[5.0, 2, 2, 1, 0, 2]])
    assert kwta(x, 0.34).tolist() == [[5.0, 2, 2, 0, 0, 2]]  # ceil(0.34*6)=3 -> threshold 2, all 2s pass
    assert kwta(torch.arange(8.0).view(1, 2, 2, 2), 0.25).flatten().tolist() == [0, 0, 0, 0, 0, 0, 6, 7]


def test_hoyer_log_excludes_and_counts_all_zero_samples():
    log = HoyerLog()
    log.add(torch.tensor([[0.0, 0, 3, 0], [1, 1, 1, 1], [0, 0, 0, 0]]))  # one-hot 1, flat 0, silent: undefined
    assert log.pop() == {"hoyer": 0.5, "hoyer_excluded": 1}  # never 1.0 for the silent sample
    log.add(torch.zeros(2, 3, 4, 4))
    assert log.pop() == {"hoyer_excluded": 2} and log.pop() == {}


SPARSITY_LOGGING = ["kwta:k=1.0,layer=0", "san:activation=identity,layer=0", "sparseout:p=0.0,layer=0",
                    "dutycycle:density=1.0,weight_density=1,layer=0", "ebp:K=2,layer=0", "easr:layer=0"]


@pytest.mark.parametrize("spec", SPARSITY_LOGGING, ids=[s.split(":")[0] for s in SPARSITY_LOGGING])
def test_training_log_hoyer_equals_the_cards_sparsity_metric(spec):
    """Each plugin's epoch log and sparsity_metrics (what the card shows) agree on the same activations,
    with a dead unit and a sample whose every unit is silent (excluded and counted by both)."""
    acts = np.random.default_rng(0).random((12, 6)) + 0.1
    acts[:, 2] = 0.0   # a dead unit
    acts[4] = 0.0      # a silent sample: no Hoyer sparsity
    maps = torch.from_numpy(acts).float()[:, :, None, None].expand(12, 6, 3, 3).contiguous()  # absmean = acts
    model = nn.Sequential(nn.Identity(), nn.Flatten()).train()
    plugin = make_plugin(spec).attach(model, num_classes=2)
    try:
        for half in (slice(0, 6), slice(6, 12)):  # two batches in one epoch
            model(maps[half])
            plugin.loss(maps[half], torch.zeros(6, dtype=torch.long), None)
        logged = plugin.epoch_end(0)
    finally:
        plugin.detach()
    card = sparsity_metrics(acts)
    assert logged["hoyer"] == pytest.approx(card.hoyer, rel=1e-6)
    assert logged["hoyer_excluded"] == card.excluded["hoyer"] == 1


def test_plugin_base_contract_defaults():
    class Noop(Plugin):
        name = "noop"

    p = Noop()
    assert p.loss(None, None, None) == {} and p.state_dict() == {} and p.spec() == "noop:"


def test_dutycycle_boosts_rarely_winning_units():
    model = nn.Sequential(nn.Identity())
    plugin = make_plugin("dutycycle:density=0.5,boost=10,period=4,weight_density=1,layer=0").attach(model, num_classes=1)
    x = torch.tensor([[3.0, 2.0, 1.0, 0.5]] * 4)
    first = model(x)
    assert first[0].tolist() == [3.0, 2.0, 0, 0]  # duty cycles start equal: plain top-2
    assert plugin.duty.tolist() == [1.0, 1.0, 0.0, 0.0]
    second = model(x)  # units 0, 1 have won all the time: boost exp(10*(0.5-1)) makes 2, 3 win
    assert second[0].tolist() == [0, 0, 1.0, 0.5]
    restored = make_plugin("dutycycle:density=0.5,boost=10,period=4,weight_density=1,layer=0")
    restored.load_state_dict(plugin.state_dict())
    assert torch.equal(restored.duty, plugin.duty)


def test_dutycycle_conv_units_compete_per_position_with_channel_duty_cycles_and_sparse_weights():
    """Paper's k-winners for conv layers: every (channel, position) competes, duty cycles are per channel
    (fraction of its positions active); the feeding conv keeps a fixed fraction of its weights."""
    torch.manual_seed(0)
    model = TinyNet(c=4)
    plugin = make_plugin("dutycycle:density=0.25,boost=0,weight_density=0.5,layer=relu").attach(model, num_classes=3)
    assert plugin.weight_layer == "conv"
    x = torch.rand(2, 1, 4, 4)
    maps = []
    plugin.hook("relu", lambda out: maps.append(out.detach().clone()))
    model(x)
    out = maps[0]
    assert ((out != 0).flatten(1).sum(1) <= 16).all()  # k = 0.25 · 4·4·4 = 16 units per sample
    with torch.no_grad():  # the winners are the 16 largest of the (boost 0) layer output
        reference = torch.relu(model.conv(x))
    top = reference.flatten(1).topk(16, dim=1).values[:, -1:]
    assert torch.equal(out.flatten(1) != 0, (reference.flatten(1) >= top) & (reference.flatten(1) > 0))
    expected_duty = (out > 0).flatten(2).double().mean(2).mean(0)
    assert torch.allclose(plugin.duty, expected_duty)
    # sparse weights: half of each filter's 9 inputs zeroed, still zero after optimizer steps, and no
    # forward pass writes the weights (what a checkpoint saves is what runs)
    zeros = (model.conv.weight == 0).flatten(1).sum(1)
    assert zeros.tolist() == [4, 4, 4, 4] or zeros.tolist() == [5, 5, 5, 5]
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal((model.conv.weight == 0), ~plugin.weight_mask)
    before = model.conv.weight.clone()
    model(x)
    assert torch.equal(model.conv.weight, before)
    plugin.detach()


def test_easr_penalty_and_sparseout_expectation():
    from inspectnet_plugins.sparseout import sparseout

    model = nn.Sequential(nn.Identity())
    plugin = make_plugin("easr:lam=1,p=0.5,layer=0").attach(model, num_classes=1)
    x = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    model(x)
    assert torch.allclose(plugin.loss(x, None, None)["easr"], torch.tensor((0.5 - 2) ** 2 + (0.5 - 1) ** 2))
    a = torch.full((200000,), 4.0)
    g = torch.Generator().manual_seed(0)
    out = sparseout(a, 0.5, 1.0, g)
    # mean preserved; noise amplitude |a|^(q/2) = 2: values 4 ± 2
    assert abs(out.mean().item() - 4.0) < 0.02 and set(out.unique().tolist()) == {2.0, 6.0}
    plugin.detach()
    so = make_plugin("sparseout:layer=0").attach(model, num_classes=1)
    model.eval()
    assert torch.equal(model(x), x)  # identity at evaluation
    so.detach()


def test_plugins_command_lists_json(capsys):
    import json

    from inspectnet.cli import main

    assert main(["plugins", "--json"]) == 0
    doc = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert FIRST_PARTY <= set(doc) and doc["kwta"]["alters_forward"] and doc["ebp"]["needs_labels"]
    assert main(["plugins"]) == 0 and "paper:" in capsys.readouterr().out


# ---------------------------------------------------------------- the contract over every registered plugin
# hyperparameters that fit the small test model (the defaults fit ImageNet-sized ones); any other plugin
# registered in the environment runs with its defaults
CONTRACT_SPECS = {"san": "san:layer=layer1"}


@pytest.fixture(scope="module")
def contract_model():
    from inspectnet.models.zoo import load_model

    return load_model("test_resnet", num_classes=3, in_chans=1, input_size=32, seed=0).model


@pytest.mark.parametrize("name", plugin_names())
def test_every_registered_plugin_keeps_the_plugin_contract(name, contract_model):
    from inspectnet.testing import check_plugin

    torch.manual_seed(0)
    ran = check_plugin(lambda: make_plugin(CONTRACT_SPECS.get(name, name)), contract_model)
    assert ran[:2] == ["attach/detach", "state dict"]


class _LeavesAHook(Plugin):
    name = "leaves_a_hook"

    def setup(self, model):
        model.get_submodule("conv").register_forward_hook(lambda m, i, o: None)  # not through self.hook


class _ScalesWeights(Plugin):
    name = "scales_weights"

    def setup(self, model):
        with torch.no_grad():
            model.fc.weight.mul_(2)


class _ForgetsState(Plugin):
    name = "forgets_state"

    def setup(self, model):
        self.count = torch.zeros(())

    def loss(self, x, y, logits):
        self.count += 1
        return {}

    def state_dict(self):
        return {"count": self.count.clone()}


@pytest.mark.parametrize("cls, clause", [(_LeavesAHook, "hooks"), (_ScalesWeights, "state changed: fc.weight"),
                                         (_ForgetsState, "does not return the same state")])
def test_the_contract_check_catches_a_plugin_that_breaks_it(cls, clause):
    from inspectnet.testing import PluginContractError, check_plugin

    with pytest.raises(PluginContractError, match=clause):
        check_plugin(cls, TinyNet(), distributed=False)


def _distribution(site, name, entry_points, modules):
    """A real installed distribution in folder ``site``: its dist-info and its modules."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[inspectnet.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in
                                                                           entry_points.items()))
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


def test_a_broken_plugin_is_named_in_one_line_and_breaks_no_other_lookup(tmp_path, monkeypatch):
    from inspectnet.plugins import get_plugin

    _distribution(tmp_path, "thirdparty", {"broken": "brokenmod:Broken", "fine": "finemod:Fine"}, {
        "brokenmod": "raise ImportError('brokenmod needs a library that is missing')\n",
        "finemod": """
            from inspectnet.plugins import Plugin
            class Fine(Plugin):
                name = "fine"
        """})
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("brokenmod", "finemod"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    assert {"broken", "fine"} <= set(plugin_names())  # listing imports nothing
    assert "brokenmod" not in sys.modules and "finemod" not in sys.modules
    assert make_plugin("ebp:K=3").hp["K"] == 3 and "brokenmod" not in sys.modules  # a lookup imports its own
    assert get_plugin("fine").__name__ == "Fine" and "brokenmod" not in sys.modules
    with pytest.raises(InspectnetError) as info:
        make_plugin("broken")
    assert str(info.value) == ("plugin 'broken' (brokenmod:Broken) failed to load: ImportError: brokenmod needs a "
                               "library that is missing")
    errors = {}
    plugins = available_plugins(errors)
    assert FIRST_PARTY | {"fine"} <= set(plugins) and "broken" not in plugins
    assert errors == {"broken": str(info.value)}


def test_a_plugin_runs_as_training_hooks_with_one_signature_per_hook():
    from inspectnet.training.hooks import TrainHooks

    plugin = make_plugin("ebp:K=2,layer=conv")
    assert isinstance(plugin, TrainHooks)
    model = TinyNet()
    plugin.attach(model, num_classes=3)
    plugin.epoch_begin(0, model)
    groups = plugin.parameter_groups(model, 1e-4)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert plugin.identity() == {"plugins": [plugin.spec()]}
    plugin.detach()
