import json
import subprocess
import sys

import pytest
from PIL import Image

from inspectnet.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_python_dash_m_and_one_line_errors():
    proc = subprocess.run([sys.executable, "-m", "inspectnet", "layers", "resnet18", "--num-classes", "3",
                           "--input-size", "32", "--json"], capture_output=True, text=True, check=True)
    doc = json.loads(proc.stdout)
    assert doc["head"] == "fc" and doc["layers"][-1]["output_shape"] == [1, 3]
    bad = subprocess.run([sys.executable, "-m", "inspectnet", "layers", "resnet1"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "closest: resnet18" in bad.stderr


def test_train_probe_predict_commands(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "train", "resnet18", "digits:train", "--in-chans", "1", "--num-classes", "10",
                           "--input-size", "16", "--epochs", "1", "--limit", "64", "--out", str(tmp_path / "m"),
                           "--json")
    assert code == 0 and json.loads(out)[0]["epoch"] == 1
    code, out, _ = run_cli(capsys, "probe", str(tmp_path / "m"), "digits:test", "--layers", "layer4,last_conv",
                           "--out", str(tmp_path / "r"), "--limit", "20", "--json")
    manifest = json.loads(out)
    assert code == 0 and manifest["num_samples"] == 20
    assert [entry["name"] for entry in manifest["layers"]] == ["layer4", "layer4.1.conv2"]
    img = tmp_path / "seven.png"
    Image.new("L", (28, 28), 0).save(img)
    code, out, _ = run_cli(capsys, "predict", str(tmp_path / "m"), str(img), "--topk", "3", "--json")
    result = json.loads(out)
    assert code == 0 and result[0]["image"] == str(img) and len(result[0]["top"]) == 3
    assert abs(sum(t["prob"] for t in result[0]["top"])) <= 1.0 + 1e-6
    assert set(result[0]["top"][0]) == {"index", "label", "prob"}


@pytest.mark.parametrize("argv, message", [
    (["probe", "resnet18", "digits", "--in-chans", "2", "--layers", "layer4", "--out", "X"], "2 channels"),
    (["probe", "resnet18", "digits", "--num-classes", "10", "--layers", "layer9", "--out", "X"],
     "unknown layer 'layer9'"),
    (["predict", "resnet18", "missing.png"], "missing.png does not exist"),
    (["train", "resnet18", "nowhere", "--out", "X"], "neither a folder nor a built-in source"),
])
def test_bad_input_exits_2_with_cause(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err and err.startswith("inspectnet: error:")
