"""The scripts in examples/ run as a user runs them, on tiny data (slow: each trains, audits or exports)."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.slow


def example(name: str):
    """The example script ``name`` imported as a module (its ``main(argv)`` is what the command line runs)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_audit_folder_audits_imagenet_style_folders(tmp_path, capsys):
    from inspectnet.data import load_data
    from inspectnet.data.datasets import write_folder

    write_folder(load_data("photos:train?n=40"), tmp_path / "train")
    write_folder(load_data("photos:test?n=40"), tmp_path / "test")
    card = example("audit_folder").main([str(tmp_path / "train"), str(tmp_path / "test"), "--input-size", "64",
                                         "--limit", "32", "--out", str(tmp_path / "audit")])
    printed = capsys.readouterr().out
    assert (tmp_path / "audit" / "card.html").exists()
    assert {s["status"] for s in card["sections"].values()} == {"ok"}
    heads = card["sections"]["decomposition"]["result"]
    assert heads["num_classes"] == 1000 and heads["classes_with_data"] == 4
    shown = re.search(r"accuracy over all 1000 classes: ([\d.]+)%", printed)
    assert shown and float(shown.group(1)) == pytest.approx(100 * heads["accuracy_full"], abs=0.05)


def test_export_and_serve_predicts_like_torch_without_importing_it(tmp_path):
    from inspectnet import load_data, load_model, predict, save_model

    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=32, seed=0)
    save_model(zm, tmp_path / "model")
    images = []
    for i in range(3):
        images.append(tmp_path / f"digit{i}.png")
        load_data("digits:test").image(i).save(images[-1])
    script = str(EXAMPLES / "export_and_serve.py")
    subprocess.run([sys.executable, script, "export", str(tmp_path / "model"), "--calibration", "digits:train",
                    "--calibration-limit", "32", "--out", str(tmp_path / "model.onnx")], check=True, timeout=600)
    served = subprocess.run([sys.executable, script, "serve", str(tmp_path / "model.onnx"), *map(str, images),
                             "--topk", "1", "--out", str(tmp_path / "overlays")],
                            check=True, timeout=300, capture_output=True, text=True).stdout
    assert "torch imported: False" in served
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 3   # one overlay per image (top-1 class)
    expected = predict(load_model(str(tmp_path / "model")), [str(p) for p in images], topk=1)
    for path, item in zip(images, expected):
        assert f"{path}: {item['top'][0]['label']} " in served


def test_finetune_and_compare_reports_the_plugin_effect(tmp_path, capsys):
    from inspectnet import TrainConfig, load_data, load_model, train

    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16, seed=0)
    train(zm, load_data("digits:train", zm.transform()), tmp_path / "base", TrainConfig(epochs=1, limit=320))
    result = example("finetune_and_compare").main([str(tmp_path / "base"), "digits:train", "digits:test",
                                                   "--plugin", "kwta:k=0.1,layer=layer4", "--epochs", "1",
                                                   "--limit", "320", "--out", str(tmp_path / "compare")])
    before, after = result["before"], result["after"]
    # k-WTA keeps 10 % of layer4's activations: its Hoyer sparsity must rise well above the plain model's
    assert after["hoyer"] > before["hoyer"] + 0.2
    assert 0 < before["fidelity"] <= 1 and 0 < after["fidelity"] <= 1
    table = capsys.readouterr().out
    assert re.search(rf"after\s+[\d.]+%\s+{after['hoyer']:.3f}\s+{after['rules']}\s+{after['atoms']}", table)
