"""Fine-tuning engine: plugins through train(), bit-for-bit resume, refusals, freezing."""

import json

import numpy as np
import pytest
import torch

from inspectnet import load_data, load_model
from inspectnet.core.errors import InspectnetError
from inspectnet.data.datasets import ArrayDataset
from inspectnet.training.finetune import FinetuneResult, finetune, freeze_until
from inspectnet.training.loop import TrainConfig

CONFIG = TrainConfig(epochs=2, batch_size=32, limit=64, lr=0.05)
PLUGINS = ["ebp:K=4,layer=layer4,lam=0.01", "san:activation=max-activations,k=2,layer=layer2"]


def _model():
    torch.manual_seed(0)
    return load_model("resnet18", num_classes=10, in_chans=1, input_size=16)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits:train", _model().transform())


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, digits):
    zm_a = _model()
    full = finetune(zm_a, digits, tmp_path / "a", PLUGINS, CONFIG)
    zm_b = _model()
    part = finetune(zm_b, digits, tmp_path / "b", PLUGINS, CONFIG, stop_after=1)
    assert len(part.history) == 1
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ckpt["hooks"]["ebp"]["D"].dtype == torch.float64  # plugin state is in the checkpoint
    zm_c = _model()  # a fresh process would start from the same command and resume
    resumed = finetune(zm_c, digits, tmp_path / "b", PLUGINS, CONFIG)
    for (k, va), vc in zip(zm_a.model.state_dict().items(), zm_c.model.state_dict().values()):
        assert torch.equal(va, vc), k
    assert full.history == resumed.history
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == full.history
    assert "ebp" in full.history[0] and "ebp/hoyer" in full.history[0] and "san/density" in full.history[0]
    saved = FinetuneResult.load(tmp_path / "b" / "finetune.json")
    assert saved.plugins[0].startswith("ebp:K=4")
    # detached afterwards: the saved folder loads as a plain model with the same weights
    again = load_model(str(tmp_path / "b"))
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                 zm_c.model.state_dict().values()))
    assert sum(len(m._forward_hooks) for m in zm_c.model.modules()) == 0


def test_resume_with_another_plugin_set_is_refused(tmp_path, digits):
    finetune(_model(), digits, tmp_path, ["kwta:k=0.5,layer=layer4"], CONFIG, stop_after=1)
    with pytest.raises(InspectnetError, match="different training run.*hooks"):
        finetune(_model(), digits, tmp_path, ["kwta:k=0.4,layer=layer4"], CONFIG)


def test_plugin_needing_labels_refuses_unlabelled_data(tmp_path):
    images = np.zeros((4, 8, 8), np.uint8)
    ds = ArrayDataset("blank", images, np.array([0, 1, -1, 2]), [str(i) for i in range(10)],
                      _model().transform())
    with pytest.raises(InspectnetError, match="plugin ebp needs labels"):
        finetune(_model(), ds, tmp_path, ["ebp"], CONFIG)


def test_freeze_until_and_freeze_bn(tmp_path, digits):
    zm = _model()
    before = {k: v.clone() for k, v in zm.model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=32, limit=32)
    r = finetune(zm, digits, tmp_path, [], cfg, freeze_until_layer="layer2", freeze_bn=True)
    after = zm.model.state_dict()
    assert r.frozen_parameters > 0
    for k in before:
        frozen = k.startswith(("conv1", "bn1", "layer1", "layer2"))
        if frozen or "running" in k or "num_batches" in k:
            assert torch.equal(before[k], after[k]), k  # frozen weights and BN statistics unchanged
    assert not torch.equal(before["layer4.1.conv2.weight"], after["layer4.1.conv2.weight"])


def test_freeze_until_counts_parameters():
    zm = _model()
    n = freeze_until(zm.model, "conv1")
    assert n == 1 and not zm.model.conv1.weight.requires_grad and zm.model.bn1.weight.requires_grad


def test_load_finetuned_reattaches_forward_altering_plugins(tmp_path, digits):
    from inspectnet.training.finetune import load_finetuned

    zm = _model()
    cfg = TrainConfig(epochs=1, batch_size=32, limit=32)
    finetune(zm, digits, tmp_path, ["kwta:k=0.1,layer=layer4", "ebp:K=2,layer=layer4"], cfg, keep_attached=True)
    x = torch.stack([digits[i][0] for i in range(4)])
    zm.model.eval()
    expected = zm.model(x)
    again, attached = load_finetuned(tmp_path)
    assert [p.name for p in attached] == ["kwta"]  # EBP does not change inference
    assert torch.allclose(again.model.eval()(x), expected, atol=1e-6)


def test_cli_resume_without_checkpoint_and_bad_plugin_fail_cleanly(tmp_path, capsys):
    from inspectnet.cli import main

    base = ["finetune", "resnet18", "digits:train", "--num-classes", "10", "--in-chans", "1", "--input-size", "16",
            "--limit", "8", "--epochs", "1", "--out", str(tmp_path / "o")]
    assert main([*base, "--resume"]) == 2
    assert "holds no checkpoint.pt" in capsys.readouterr().err
    assert main([*base, "--plugin", "kwta:k=2"]) == 2
    assert "k=2.0 is above its maximum" in capsys.readouterr().err


def test_mixed_precision_keeps_regularizers_in_float32(tmp_path, digits):
    """CPU bf16 autocast exercises the amp path: activations are bf16, the EBP term float32."""
    from inspectnet_plugins.ebp import EliteBackProp

    seen = {}

    class Spy(EliteBackProp):
        def loss(self, x, y, logits):
            terms = super().loss(x, y, logits)
            seen.setdefault("dtype", terms["ebp"].dtype)
            return terms

    zm = _model()
    plugin = Spy(K=4, layer="layer4")
    r = finetune(zm, digits, tmp_path, [plugin], TrainConfig(epochs=1, batch_size=32, limit=32), amp=True)
    assert seen["dtype"] == torch.float32 and plugin.D.dtype == torch.float64
    assert np.isfinite(r.history[0]["loss"])
