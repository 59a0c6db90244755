"""A pretrained model as a user meets it: the shipped pretrained EfficientNet-Lite0 audited in its own 1000-class label
space on real photo crops in ImageNet's folder layout (one WordNet-id folder per class).

The audit's accuracy must be what ``inspectnet predict`` gives on the same files, with WordNet-id folders
and with class-name folders; a folder the model has no class for is refused with the closest names.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inspectnet.cli import main
from inspectnet.data.labels import imagenet_names

IMAGENET = imagenet_names()
FAST_AUDIT = ["--images", "1", "--ig-steps", "2", "--top-units", "1", "--explain-images", "4", "--sanity-images", "2"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, lite0_weights):
    """wnid folders of photo crops (fit: 32, eval: 8) and `inspectnet predict` on every eval file."""
    root = tmp_path_factory.mktemp("photos")
    for split in ("train", "test"):
        assert main(["folder", f"photos:{split}?n=40", "--out", str(root / split)]) == 0
    files = sorted((root / "test").rglob("*.png"))
    proc = subprocess.run([sys.executable, "-m", "inspectnet", "predict", "shipped:efficientnet_lite0",
                           *map(str, files), "--topk", "1", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    top1 = {Path(r["image"]).name: r["top"][0]["index"] for r in json.loads(proc.stdout)}  # names are unique
    return root, top1


def predict_accuracy(top1, folder, index_of_folder):
    """What `inspectnet predict` says: the share of the files in ``folder`` whose top-1 is their folder's class."""
    return float(np.mean([top1[f.name] == index_of_folder[f.parent.name] for f in sorted(folder.rglob("*.png"))]))


def test_wnid_folder_audit_reports_what_predict_gives(folders, tmp_path, capsys):
    root, top1 = folders
    code = main(["audit", "shipped:efficientnet_lite0", str(root / "train"), "--eval", str(root / "test"),
                 "--out", str(tmp_path / "audit"), *FAST_AUDIT])
    assert code == 0, capsys.readouterr().err
    card = json.loads((tmp_path / "audit" / "card.json").read_text())
    probe = card["sections"]["probe"]["result"]
    wnid_index = {row["data"]: row["index"] for row in probe["eval"]["label_mapping"]["classes"]}
    assert wnid_index == {"n02123045": 281, "n07920052": 967, "n03773504": 657, "n04485082": 872}
    assert probe["accuracy"] == pytest.approx(predict_accuracy(top1, root / "test", wnid_index))
    assert 0.0 < probe["accuracy"] < 1.0  # real predictions of a real model, not all right or all wrong
    # every per-class analysis covers the four classes with data, in the model's 1000-class space
    dec = card["sections"]["decomposition"]["result"]
    assert [p["class"] for p in dec["per_class"]] == [281, 657, 872, 967]
    assert dec["dense_classes"] == 996 and dec["num_classes"] == 1000
    supported = sum(len(p["features"]) for p in dec["per_class"])
    assert dec["head_macs_decomposed"] == 996 * 1280 + supported
    assert dec["rA"] is None or np.isfinite(dec["rA"])
    assert dec["among_fitted_classes"]["num_classes"] == 4
    readme = (tmp_path / "audit" / "README.md").read_text()
    assert "| n02123045 | tabby | 281 | WordNet id |" in readme
    assert "Classes with data: 4 of the model's 1000 (tabby, missile, tripod, espresso)" in readme
    assert "| tench |" not in readme and "| goldfish |" not in readme  # no per-class rows of classes without data
    assert card["sections"]["rules"]["status"] == "ok"
    attributions = card["sections"]["attributions"]["result"]
    assert not attributions["errors"] and [c["class"] for c in attributions["classes"]] == [281, 657, 872, 967]
    # explanations of the 1000-class model on the photos: every form measured, the evidence maps ranked
    forms = card["sections"]["explanations"]["result"]["forms"]
    assert [f["status"] for f in forms] == ["ok", "ok", "ok", "missing"]
    # the trust measurement every default audit runs: all 8 evaluation crops, evidence and Grad-CAM ranked
    trust = card["sections"]["trust"]["result"]
    assert trust["images"] == 8 and [trust["methods"][m]["evaluated"] for m in ("evidence", "gradcam")] == [8, 8]
    assert "### Trust in the explanations" in readme
    rows = card["sections"]["explanations"]["result"]["rows"]
    assert {(r["form"], r["method"]) for r in rows if r["evaluated"] == 4} >= {("full", "evidence"),
                                                                                 ("decomposed", "evidence")}


def test_class_name_folders_give_the_same_accuracy_as_predict(folders, tmp_path, capsys):
    root, top1 = folders
    names = {"n02123045": "Egyptian_cat", "n07920052": "espresso", "n03773504": "Missile", "n04485082": "tripod"}
    for wnid, name in names.items():
        shutil.copytree(root / "test" / wnid, tmp_path / "named" / name)
    code = main(["probe", "shipped:efficientnet_lite0", str(tmp_path / "named"), "--layers", "blocks.6",
                 "--out", str(tmp_path / "rec")])
    out = capsys.readouterr().out
    assert code == 0
    index = {"Egyptian_cat": 285, "espresso": 967, "Missile": 657, "tripod": 872}
    expected = predict_accuracy(top1, tmp_path / "named", index)
    assert f"accuracy {expected:.4f}" in out


def test_unmappable_folder_is_refused_with_the_closest_names(folders, tmp_path, capsys):
    root, _ = folders
    shutil.copytree(root / "test", tmp_path / "data")
    (tmp_path / "data" / "n07920052").rename(tmp_path / "data" / "espressso")
    code = main(["audit", "shipped:efficientnet_lite0", str(tmp_path / "data"), "--out", str(tmp_path / "audit")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "class 'espressso' (closest: espresso (967, n07920052)" in err and "matches no class of the model" in err
    assert not (tmp_path / "audit" / "probe").exists()


@pytest.mark.slow
def test_onnx_run_on_wnid_folder_prints_the_same_accuracy_without_torch(folders, tmp_path):
    root, top1 = folders
    assert main(["export", "shipped:efficientnet_lite0", "--out", str(tmp_path / "l0.onnx"), "--no-latency"]) == 0
    code = ("import json, sys\nfrom inspectnet.cli import main\nrc = main(sys.argv[1:])\n"
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, "run", str(tmp_path / "l0.onnx"), str(root / "test"), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"rc": 0, "torch": False}, proc.stderr
    wnid_index = {"n02123045": 281, "n07920052": 967, "n03773504": 657, "n04485082": 872}
    assert json.loads(proc.stdout)["accuracy"] == pytest.approx(predict_accuracy(top1, root / "test", wnid_index))


@pytest.mark.slow
def test_export_of_a_subset_audit_ships_the_dense_model_and_says_why(folders, tmp_path, capsys):
    """4 of 1000 classes with data: the decomposed head's 996 dense rows outscore its 5-feature rows, so it
    loses far more than --export-max-drop; the audit exports the pretrained model itself and the card says why."""
    root, top1 = folders
    code = main(["audit", "shipped:efficientnet_lite0", str(root / "train"), "--eval", str(root / "test"),
                 "--out", str(tmp_path / "audit"), "--export", "--images", "1", "--ig-steps", "2", "--top-units", "1"])
    assert code == 0, capsys.readouterr().err
    card = json.loads((tmp_path / "audit" / "card.json").read_text())
    exp = card["sections"]["export"]["result"]
    dense, candidate = exp["models"]
    wnid_index = {"n02123045": 281, "n07920052": 967, "n03773504": 657, "n04485082": 872}
    assert dense["accuracy"] == pytest.approx(predict_accuracy(top1, root / "test", wnid_index))
    assert candidate["accuracy"] < dense["accuracy"] - 0.05
    assert exp["model"] == "dense model (as audited)" and dense["fingerprint"] == card["model"]["fingerprint"]
    assert "only 4 of the model's 1000 classes have data" in exp["dense_instead"]
    assert exp["parity"]["top1_agreement"] == 1.0
    assert "Not the decomposed model: " in (tmp_path / "audit" / "README.md").read_text()
