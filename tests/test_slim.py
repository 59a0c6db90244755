import pytest
import torch
from torch import nn

from inspectnet import InspectnetError, load_model, save_model
from inspectnet.analysis.heads.decompose import decompose_model
from inspectnet.analysis.heads.influence import InfluenceMap
from inspectnet.analysis.heads.slim import count_macs, slim_model
from inspectnet.models.heads import ChannelGather, DecomposedLinear
from inspectnet.models.surgery import apply_slimming


def random_map(c, d, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    sup = [sorted(torch.randperm(d, generator=g)[:k].tolist()) for _ in range(c)]
    return InfluenceMap.full(c, d, k1=k, k2=k, supports=sup, frequencies=[[1.0] * k for _ in sup])


def randomize_norms(model):
    """Non-trivial BN statistics, so a wrongly sliced row would show in the logits."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)  # β = 0 would hide its rows


def decomposed(spec, size, k=5, **kw):
    torch.manual_seed(0)
    zm = load_model(spec, num_classes=10, input_size=size, **kw)
    randomize_norms(zm.model)
    return decompose_model(zm, random_map(10, zm.head.in_features, k))


def check_roundtrip(szm, dzm, tmp_path, size):
    x = torch.randn(3, 3, size, size)
    save_model(szm, tmp_path / "s")
    back = load_model(str(tmp_path / "s"))
    with torch.no_grad():
        ref = dzm.model(x)
        torch.testing.assert_close(back.model(x), ref, rtol=0, atol=1e-4 * max(1, ref.abs().max()))
        assert torch.equal(back.model(x), szm.model(x))
    return back


def test_efficientnet_conv_head_rows(tmp_path):
    dzm = decomposed("efficientnet_lite0", 32)
    szm, rep = slim_model(dzm, latency_reps=1, batch=2)
    keep = dzm.head.union()
    assert rep["method"] == "efficientnet" and rep["kept_channels"] == len(keep) <= 50
    assert szm.model.conv_head.out_channels == len(keep) and szm.model.bn2.num_features == len(keep)
    assert szm.head.feature_ids.tolist() == keep and szm.head.supports() == dzm.head.supports()
    # conv_head is 1x1 over 320 channels on a 1x1 map at 32 px; the head keeps its nnz MACs
    assert rep["macs_saved"] == (1280 - len(keep)) * 320 * 1
    assert rep["logits_max_abs_diff"] < 1e-4 and rep["top1_agreement"] == 1.0 and rep["params_saved"] > 0
    check_roundtrip(szm, dzm, tmp_path, 32)


@pytest.mark.parametrize("spec", ["resnet18", "resnet10t", pytest.param("resnet26", marks=pytest.mark.slow)])
def test_resnet_last_block(spec, tmp_path):
    dzm = decomposed(spec, 32)
    szm, rep = slim_model(dzm, latency_reps=1, batch=2)
    assert rep["method"] == "resnet" and rep["logits_max_abs_diff"] < 1e-4 and rep["macs_saved"] > 0
    block = szm.model.layer4[-1]
    if spec == "resnet18":  # identity shortcut: gathered
        assert isinstance(block.downsample, ChannelGather)
    if spec == "resnet10t":  # the single last block has a downsample conv + BN: its rows are removed
        assert block.downsample[-2].out_channels == rep["kept_channels"]
    check_roundtrip(szm, dzm, tmp_path, 32)


def test_plain_linear_before_head(tmp_path):
    torch.manual_seed(0)
    zm = load_model("torchvision:mobilenet_v3_small", num_classes=10, input_size=32)
    dzm = decompose_model(zm, random_map(10, 1024, 3))
    szm, rep = slim_model(dzm, latency_reps=1, batch=2)
    assert rep["method"] == "linear" and szm.model.classifier[0].out_features == rep["kept_channels"]
    assert rep["macs_saved"] == (1024 - rep["kept_channels"]) * 576  # the decomposed head's nnz is unchanged
    check_roundtrip(szm, dzm, tmp_path, 32)


def test_impossible_cases_are_explained():
    with pytest.raises(InspectnetError, match="squeeze-excitation"):
        slim_model(decomposed("seresnet18", 32), latency_reps=1)
    with pytest.raises(InspectnetError, match="cannot slim .* exactly"):
        slim_model(decomposed("convnext_atto", 32), latency_reps=1)
    zm = load_model("resnet18", num_classes=10, input_size=32)
    with pytest.raises(InspectnetError, match="needs a decomposed model"):
        slim_model(zm)


def test_count_macs_hand_computed():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 2))
    assert count_macs(m, (3, 5, 5)) == 4 * 25 * 27 + 100 * 2
    dec = DecomposedLinear(6, 2)
    dec.mask[0, 3:] = False
    assert count_macs(nn.Sequential(dec), (6,)) == 9


def test_saved_modifications_keep_their_format_and_load_without_the_analyses(tmp_path):
    """Saved folders name their modifications by string: these keys are a file format."""
    import json
    import subprocess
    import sys

    dzm = decomposed("resnet18", 32, k=2)
    szm, _ = slim_model(dzm, latency_reps=1, batch=2)
    save_model(szm, tmp_path / "s")
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    keep = dzm.head.union()
    assert config["modifications"] == [
        {"kind": "decomposed_head", "head_name": "fc", "in_features": 512, "out_features": 10, "bias": True,
         "k1": 2, "k2": 2},
        {"kind": "slimmed", "method": "resnet", "head_name": "fc", "keep": keep}]
    code = ("import sys; from inspectnet.models.zoo import load_model\n"
            f"zm = load_model({str(tmp_path / 's')!r})\n"
            "assert zm.head.in_features == len(zm.head.feature_ids) < 512\n"
            "print(sorted(m for m in sys.modules if m.startswith('inspectnet.analysis')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr  # the zoo never imports an analysis
    config["modifications"].append({"kind": "pruned"})
    (tmp_path / "s" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InspectnetError, match="needs modification 'pruned'"):
        load_model(str(tmp_path / "s"))


def test_count_macs_of_token_outputs_grouped_and_oblong_kernels_by_hand():
    dec = DecomposedLinear(6, 2)
    dec.mask[0, 3:] = False                       # 9 supported (class, feature) pairs
    tokens = count_macs(nn.Sequential(dec), (3, 6))  # (1, 3 tokens, 6): each token pays the 9 pairs
    assert tokens == 27 and type(tokens) is int
    conv = nn.Conv2d(4, 6, (3, 1), groups=2, padding=(1, 0))
    macs = count_macs(nn.Sequential(conv), (4, 5, 5))
    assert macs == 6 * 5 * 5 * (4 // 2) * 3 * 1 and type(macs) is int


def test_slim_report_counts_the_parameters_it_saves():
    dzm = decomposed("resnet18", 32, k=2)
    szm, report = slim_model(dzm, latency_reps=1, batch=2)
    before = sum(p.numel() for p in dzm.model.parameters())
    after = sum(p.numel() for p in szm.model.parameters())
    assert (report["params_before"], report["params_after"]) == (before, after) and after < before
    assert report["params_saved"] == before - after
    assert report["macs_saved"] == report["macs_before"] - report["macs_after"] > 0
    assert report["latency_ratio"] == report["latency_after_s"] / report["latency_before_s"]


class _Shifted(nn.Module):
    """A slimmed model whose logits are moved by ``delta``: a slimming that is not exact, by a known amount."""

    def __init__(self, inner, delta):
        super().__init__()
        self.inner, self.delta = inner, delta

    def forward(self, x):
        return self.inner(x) + self.delta


@pytest.mark.parametrize("largest_logit", [8.0, 0.5])
def test_slimming_refuses_a_logit_change_above_atol_times_the_larger_of_one_and_the_largest_logit(
        monkeypatch, largest_logit):
    import inspectnet.analysis.heads.slim as slim

    dzm = decomposed("resnet10t", 32)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        factor = largest_logit / dzm.model(x).abs().max()
        dzm.head.weight.mul_(factor)
        dzm.head.bias.mul_(factor)
        assert dzm.model(x).abs().max().item() == pytest.approx(largest_logit, rel=1e-5)
    tolerance = 1e-4 * max(1.0, largest_logit)  # the default atol times the documented scale

    def shifted_by(delta):
        monkeypatch.setattr(slim, "apply_slimming", lambda *a: _Shifted(apply_slimming(*a), delta))

    shifted_by(0.5 * tolerance)
    _, rep = slim_model(dzm, check_batch=x, latency_reps=1)
    assert rep["logits_max_abs_diff"] == pytest.approx(0.5 * tolerance, rel=0.05)
    shifted_by(1.5 * tolerance)
    with pytest.raises(InspectnetError, match="changed the logits"):
        slim_model(dzm, check_batch=x, latency_reps=1)
