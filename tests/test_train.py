import json

import pytest
import torch

from inspectnet import InspectnetError, load_data, load_model
from inspectnet.training.loop import TrainConfig, evaluate, train


def _model():
    torch.manual_seed(0)
    return load_model("resnet18", num_classes=10, in_chans=1, input_size=16)


def test_interrupted_training_resumes_bit_for_bit(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=32, limit=96, lr=0.05)
    a = _model()
    ds = load_data("digits:train", a.transform())
    full = train(a, ds, tmp_path / "full", cfg)
    b = _model()
    train(b, ds, tmp_path / "part", cfg, stop_after=1)
    assert not (tmp_path / "part" / "config.json").exists()  # not mistaken for a finished model
    c = _model()  # a fresh process would rebuild the model from scratch
    resumed = train(c, ds, tmp_path / "part", cfg)
    assert resumed == full
    for (k, v), (_, w) in zip(a.model.state_dict().items(), c.model.state_dict().items()):
        assert torch.equal(v, w), k
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert load_model(str(tmp_path / "part")).fingerprint() == a.fingerprint()


def test_other_run_in_same_folder_is_refused(tmp_path):
    zm = _model()
    ds = load_data("digits:train", zm.transform())
    train(zm, ds, tmp_path / "o", TrainConfig(epochs=1, limit=32), stop_after=1)
    train(zm, ds, tmp_path / "o", TrainConfig(epochs=1, limit=32))
    with pytest.raises(InspectnetError, match="different training run"):
        train(_model(), ds, tmp_path / "o", TrainConfig(epochs=2, limit=32))


def test_bad_training_input(tmp_path):
    with pytest.raises(InspectnetError, match="epochs="):
        TrainConfig(epochs=0)
    with pytest.raises(InspectnetError, match="optimizer="):
        TrainConfig(optimizer="adam")
    zm = load_model("resnet18", num_classes=3, in_chans=1, input_size=16)
    with pytest.raises(InspectnetError, match="--num-classes 10"):
        train(zm, load_data("digits", zm.transform()), tmp_path / "never", TrainConfig(epochs=1))
    with pytest.raises(InspectnetError, match="no labels"):
        train(zm, load_data("samples", zm.transform()), tmp_path / "never", TrainConfig(epochs=1))


def test_resnet18_learns_mnist(tmp_path):
    """ResNet18 reaches >= 96 % on mnist5k:test after a few CPU minutes (3 epochs)."""
    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=28)
    t = zm.transform()
    torch.manual_seed(0)
    train(zm, load_data("mnist5k:train", t), tmp_path / "m", TrainConfig(epochs=3, batch_size=64))
    acc = evaluate(load_model(str(tmp_path / "m")), load_data("mnist5k:test", t))
    assert acc >= 0.96, acc


def test_train_command_prints_a_start_line_and_one_line_per_epoch_without_a_terminal(tmp_path, capfd):
    """stderr is no terminal here (tqdm shows no bar): the start and per-epoch lines still come, and
    the model folder records the command that made it (a fine-tune after it keeps both)."""
    from inspectnet.cli import main
    from inspectnet.models.provenance import made_by

    args = ["resnet18", "digits:train", "--num-classes", "10", "--in-chans", "1", "--input-size", "16",
            "--limit", "32", "--batch-size", "16", "--epochs", "2"]
    assert main(["train", *args, "--out", str(tmp_path / "m")]) == 0
    err = capfd.readouterr().err.splitlines()
    assert err[0].startswith("training timm:resnet18 on 32 samples of digits:train for 2 epochs on cpu")
    assert [line.split(":")[0] for line in err[1:3]] == ["epoch 1/2", "epoch 2/2"]
    assert "loss=" in err[1] and err[1].endswith(" s)")
    assert made_by(tmp_path / "m") == ["inspectnet train " + " ".join(args) + f" --out {tmp_path / 'm'}"]
    assert main(["finetune", str(tmp_path / "m"), "digits:train", "--limit", "32", "--epochs", "1",
                 "--out", str(tmp_path / "f")]) == 0
    assert made_by(tmp_path / "f")[0] == made_by(tmp_path / "m")[0] and "finetune" in made_by(tmp_path / "f")[1]
