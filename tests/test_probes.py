import pytest
import torch
from torch import nn

from inspectnet import InspectnetError, Probe
from inspectnet.models.layers import eval_mode, list_layers, resolve_layers
from tests.conftest import count_hooks


class ConvReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))

    def forward(self, x):
        x = self.relu(self.conv(x))
        return self.fc(self.drop(x.mean(dim=(2, 3))))


def test_aliases_globs_and_did_you_mean():
    import torchvision

    m = torchvision.models.resnet18()
    assert resolve_layers(m, "head,last_conv,pre_logits") == ["fc", "layer4.1.conv2", "pre_logits"]
    assert resolve_layers(m, ["layer1.*.bn1"]) == ["layer1.0.bn1", "layer1.1.bn1"]
    assert resolve_layers(m, [m.layer2]) == ["layer2"]
    with pytest.raises(InspectnetError, match="closest: layer4"):
        resolve_layers(m, "layer44")
    with pytest.raises(InspectnetError, match="matches no layer"):
        resolve_layers(m, "block*")


def test_clone_protects_from_inplace_relu():
    m = ConvReLU().eval()
    x = torch.ones(1, 1, 2, 2)
    with Probe(m, ["conv"], reducer="full") as p:
        m(x)
    # conv output channel 1 is -1 everywhere; the in-place ReLU must not have zeroed the captured copy
    assert torch.equal(p.outputs["conv"][0, 1], -torch.ones(2, 2))
    with Probe(m, ["conv"], reducer="absmean") as p:
        m(x)
    assert torch.equal(p.outputs["conv"], torch.tensor([[1.0, 1.0]]))


def test_no_hook_survives_normal_exception_or_bad_argument():
    m = ConvReLU()
    with Probe(m, ["conv", "pre_logits", "relu"]):
        assert count_hooks(m) == 3 + 2  # one per layer, and two on the model that see its input
        m(torch.ones(1, 1, 2, 2))
    assert count_hooks(m) == 0
    with pytest.raises(RuntimeError), Probe(m, ["conv"]):
        m(torch.ones(1, 3, 2, 2))  # wrong channels: the forward raises inside the probe
    assert count_hooks(m) == 0
    with pytest.raises(InspectnetError), Probe(m, ["conv", "nope"]):
        pass
    assert count_hooks(m) == 0
    with pytest.raises(InspectnetError, match="unknown reducer"):
        Probe(m, ["conv"], reducer="median")
    assert count_hooks(m) == 0


def test_eval_mode_restores_mixed_flags_even_on_error():
    m = ConvReLU().train()
    m.drop.eval()
    with pytest.raises(ValueError), eval_mode(m):
        assert not m.training and not m.conv.training
        raise ValueError
    assert m.training and m.conv.training and not m.drop.training


def test_reducers_on_tokens_and_maps():
    m = ConvReLU().eval()
    x = torch.arange(4.0).view(1, 1, 2, 2)
    with Probe(m, ["conv"], reducer="max") as p:
        m(x)
    assert torch.equal(p.outputs["conv"], torch.tensor([[3.0, 0.0]]))
    with Probe(m, ["conv"], reducer="mean") as p:
        m(x)
    assert torch.equal(p.outputs["conv"], torch.tensor([[1.5, -1.5]]))


def test_list_layers_shapes():
    rows = {r["name"]: r for r in list_layers(ConvReLU(), (1, 3, 3))}
    assert rows["conv"]["output_shape"] == [1, 2, 3, 3] and rows["fc"]["params"] == 9
