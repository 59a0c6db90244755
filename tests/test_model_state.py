"""A caller's model comes back as it was: device and every module's train/eval flag (models.layers.model_state).

Without CUDA the device half is exercised with the CPU as target and the refusal of a model spread
over devices with a meta-device buffer; the CPU -> CUDA -> CPU round trip runs where CUDA exists.
"""

import pytest
import torch
from torch import nn

from inspectnet import InspectnetError
from inspectnet.models.layers import eval_mode, model_state


class Mixed(nn.Module):
    """A model whose submodules disagree about train/eval (a frozen BN inside a training model)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(self.drop(self.bn(self.conv(x)).mean(dim=(2, 3))))


def flags(model: nn.Module) -> dict[str, bool]:
    return {n: m.training for n, m in model.named_modules()}


def mixed() -> Mixed:
    m = Mixed().train()
    m.bn.eval()
    return m


def test_flags_and_device_restored_on_normal_exit():
    m = mixed()
    before = flags(m)
    with model_state(m, device="cpu", training=False) as inside:
        assert inside is m and not any(flags(m).values())
        m.train()  # a block may change the flags itself (a training loop does)
    assert flags(m) == before and before["bn"] is False and before["drop"] is True
    assert {p.device.type for p in m.parameters()} == {"cpu"}


def test_flags_restored_when_the_block_raises():
    m = mixed()
    before = flags(m)
    with pytest.raises(RuntimeError), model_state(m, device="cpu", training=False):
        m(torch.ones(2, 5, 4, 4))  # wrong channels: the forward raises inside the block
    assert flags(m) == before
    with pytest.raises(KeyError), model_state(m, training=True):
        assert all(flags(m).values())
        raise KeyError("anything")
    assert flags(m) == before


def test_bad_argument_changes_nothing():
    m = mixed()
    before = flags(m)
    with pytest.raises(InspectnetError, match="not a device"), model_state(m, device="gpu please", training=False):
        pass
    assert flags(m) == before
    m.register_buffer("elsewhere", torch.zeros(1, device="meta"))
    with pytest.raises(InspectnetError, match="spread over"), model_state(m, device="cpu"):
        pass
    assert flags(m) == before and m.conv.weight.device.type == "cpu"


def test_training_inside_keeps_the_new_weights():
    m = mixed()
    with model_state(m, device="cpu", training=True):
        with torch.no_grad():
            m.fc.weight.fill_(0.25)
    assert torch.all(m.fc.weight == 0.25)


def test_eval_mode_is_model_state_without_a_device():
    m = mixed()
    before = flags(m)
    with eval_mode(m):
        assert not any(flags(m).values())
    assert flags(m) == before


@pytest.fixture
def train_mode_model(tiny_digits_model):
    """The caller's model in train mode with one submodule in eval mode, on the CPU."""
    tiny_digits_model.model.train()
    tiny_digits_model.model.layer1.eval()
    return tiny_digits_model


@pytest.mark.filterwarnings("ignore:concepts without positive pixels")
def test_library_calls_give_the_model_back_as_it_was(train_mode_model, tmp_path):
    from inspectnet.analysis.dissect.dissection import dissect
    from inspectnet.data import load_data
    from inspectnet.data.concepts import load_concepts
    from inspectnet.export.onnx import export_onnx
    from inspectnet.models.predict import predict
    from inspectnet.probe.recorder import run_probe
    from inspectnet.training.finetune import finetune
    from inspectnet.training.loop import TrainConfig, evaluate, train

    zm = train_mode_model
    before = flags(zm.model)
    ds = load_data("digits:test", zm.transform())
    cfg = TrainConfig(epochs=1, limit=32, batch_size=16)
    calls = {
        "run_probe": lambda: run_probe(zm, ds, "layer4", tmp_path / "rec", limit=16, device="cpu"),
        "predict": lambda: predict(zm, ds, topk=2, device="cpu"),
        "evaluate": lambda: evaluate(zm, ds, limit=16, device="cpu"),
        "dissect": lambda: dissect(zm, load_concepts("shapes?n=8"), "layer1", batch_size=4, device="cpu"),
        "export_onnx": lambda: export_onnx(zm, tmp_path / "m.onnx", exporter="torchscript", latency=False),
        "train": lambda: train(zm, ds, tmp_path / "trained", cfg, device="cpu"),
        "finetune": lambda: finetune(zm, ds, tmp_path / "ft", ["kwta:layer=layer4"], cfg, device="cpu"),
    }
    for name, call in calls.items():
        call()
        assert flags(zm.model) == before, name
        assert {p.device.type for p in zm.model.parameters()} == {"cpu"}, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.filterwarnings("ignore:concepts without positive pixels")
def test_library_calls_on_cuda_move_the_model_back_to_the_cpu(train_mode_model, tmp_path):
    from inspectnet.analysis.dissect.dissection import dissect
    from inspectnet.data import load_data
    from inspectnet.data.concepts import load_concepts
    from inspectnet.models.predict import predict
    from inspectnet.probe.recorder import run_probe
    from inspectnet.training.finetune import finetune
    from inspectnet.training.loop import TrainConfig, evaluate, train

    zm = train_mode_model
    before = flags(zm.model)
    ds = load_data("digits:test", zm.transform())
    cfg = TrainConfig(epochs=1, limit=32, batch_size=16)
    calls = {
        "run_probe": lambda: run_probe(zm, ds, "layer4", tmp_path / "rec", limit=16, device="cuda"),
        "predict": lambda: predict(zm, ds, topk=2, device="cuda"),
        "evaluate": lambda: evaluate(zm, ds, limit=16, device="cuda"),
        "dissect": lambda: dissect(zm, load_concepts("shapes?n=8"), "layer1", batch_size=4, device="cuda"),
        "train": lambda: train(zm, ds, tmp_path / "trained", cfg, device="cuda"),
        "finetune": lambda: finetune(zm, ds, tmp_path / "ft", ["kwta:layer=layer4"], cfg, device="cuda"),
    }
    for name, call in calls.items():
        call()
        assert flags(zm.model) == before, name
        assert {t.device.type for t in (*zm.model.parameters(), *zm.model.buffers())} == {"cpu"}, name
