"""The torch-free runtime: numpy preprocessing parity with timm's transform, OnnxClassifier, `inspectnet run`."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from inspectnet import load_model
from inspectnet.core.errors import InspectnetError
from inspectnet.export.onnx import export_onnx
from inspectnet.runtime.classifier import OnnxClassifier, preprocess


def _photo(size, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
    return Image.fromarray(arr, mode)


CONFIGS = [
    # timm default (bicubic, crop_pct 0.95), torchvision default (bilinear 0.875), grey square, squash
    {"input_size": (3, 32, 32), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
     "interpolation": "bicubic", "crop_pct": 0.95, "crop_mode": "center"},
    {"input_size": (3, 24, 24), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
     "interpolation": "bilinear", "crop_pct": 0.875, "crop_mode": "center"},
    {"input_size": (1, 16, 16), "mean": (0.449,), "std": (0.226,), "interpolation": "bilinear",
     "crop_pct": 1.0, "crop_mode": "center"},
    {"input_size": (3, 20, 20), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear",
     "crop_pct": 0.9, "crop_mode": "squash"},
]


@pytest.mark.parametrize("config", CONFIGS, ids=["timm", "torchvision", "grey", "squash"])
@pytest.mark.parametrize("size,mode", [((57, 41), "RGB"), ((12, 30), "L"), ((200, 200), "RGB"), ((9, 7), "RGB")])
def test_numpy_preprocessing_matches_timm_transform(config, size, mode):
    from inspectnet.data.transforms import build_transform

    img = _photo(size, mode)
    ref = build_transform(config)(img).numpy()
    got = preprocess(img, config)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=3, in_chans=1, input_size=16, class_names=["ant", "bee", "cat"])
    out = tmp_path_factory.mktemp("rt") / "m.onnx"
    export_onnx(zm, out, exporter="torchscript", latency=False)
    return zm, out


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    for c, name in enumerate(["ant", "bee", "cat"]):
        (root / name).mkdir()
        for i in range(2):  # wrong sizes and colour images for a 16x16 grey model
            _photo((23 + 5 * i, 31 - c), "RGB", seed=10 * c + i).save(root / name / f"{i}.png")
    return root


def test_classifier_reproduces_torch_on_wrong_size_images(model_file, image_folder):
    zm, out = model_file
    clf = OnnxClassifier(out)
    assert clf.class_names == ["ant", "bee", "cat"] and clf.providers == ["CPUExecutionProvider"]
    files = sorted(image_folder.rglob("*.png"))
    results = clf.predict(files, topk=3, batch_size=4)
    t = zm.transform()
    with torch.inference_mode():
        probs = zm.model(torch.stack([t(Image.open(f)) for f in files])).softmax(1).numpy()
    for r, p in zip(results, probs):
        assert [x["index"] for x in r["top"]] == np.argsort(-p).tolist()
        np.testing.assert_allclose([x["prob"] for x in r["top"]], np.sort(p)[::-1], atol=1e-4)
        assert r["top"][0]["label"] == ["ant", "bee", "cat"][r["top"][0]["index"]]


RUN_NO_TORCH = """
import json, sys
from inspectnet.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def _run(*args):
    proc = subprocess.run([sys.executable, "-c", RUN_NO_TORCH, "run", *map(str, args)], capture_output=True,
                          text=True, timeout=120)
    status = json.loads(proc.stderr.strip().splitlines()[-1]) if proc.stderr.strip().endswith("}") else {}
    return proc, status


def test_run_cli_never_imports_torch(model_file, image_folder):
    _, out = model_file
    proc, status = _run(out, image_folder, "--json", "--topk", "2")
    assert status == {"rc": 0, "torch": False}, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["predictions"]) == 6 and 0.0 <= doc["accuracy"] <= 1.0
    clf_top = [r["top"][0]["index"] for r in OnnxClassifier(out).predict(sorted(image_folder.rglob("*.png")))]
    assert [r["top"][0]["index"] for r in doc["predictions"]] == clf_top
    labels = [i // 2 for i in range(6)]
    assert doc["accuracy"] == pytest.approx(np.mean(np.array(clf_top) == labels))
    proc, status = _run(out, image_folder / "ant" / "0.png")
    assert status == {"rc": 0, "torch": False} and "ant" in proc.stdout


def test_run_prints_a_summary_for_a_folder_and_every_image_when_asked(model_file, image_folder):
    """A folder gives a few summary lines by default; --per-image gives five lines per image (top-5)."""
    _, out = model_file
    proc, status = _run(out, image_folder, "--limit", "4")
    assert status["rc"] == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and "4 images (the first 4: --limit 4)" in lines[0]
    assert lines[1].startswith("accuracy ") and lines[1].endswith("on 4 labelled images")
    assert lines[2].startswith("most predicted: ") and "--per-image" in lines[3]
    proc, _ = _run(out, image_folder, "--per-image", "--topk", "3")
    assert len(proc.stdout.splitlines()) == 6 * 4 + 1 and "ant/0.png" in proc.stdout


def test_run_refuses_corrupt_and_foreign_onnx(tmp_path, image_folder):
    img = image_folder / "ant" / "0.png"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf at all" * 10)
    proc, status = _run(bad, img)
    assert proc.returncode == 0 and status["rc"] == 2 and "not a loadable ONNX model" in proc.stderr
    assert not status["torch"]
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["logits"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
                                   [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)],
                                    ir_version=8), str(foreign))
    with pytest.raises(InspectnetError, match="not written by inspectnet export"):
        OnnxClassifier(foreign)
    proc, status = _run(foreign, img)
    assert status["rc"] == 2 and "inspectnet export" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(InspectnetError, match="does not exist"):
        OnnxClassifier(tmp_path / "missing.onnx")


def test_unreadable_image_is_named(model_file, tmp_path):
    _, out = model_file
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(InspectnetError, match="junk.png"):
        OnnxClassifier(out).predict([junk])


def test_missing_onnxruntime_names_the_extras(model_file):
    _, out = model_file
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from inspectnet.runtime.classifier import OnnxClassifier\n"
            f"OnnxClassifier({str(out)!r})")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "inspectnet[cpu]" in proc.stderr and "inspectnet[gpu]" in proc.stderr


def test_package_import_stays_light():
    code = ("import sys, inspectnet, inspectnet.runtime.classifier, inspectnet.export.int8\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "from inspectnet import load_model\n"
            "assert 'torch' in sys.modules and callable(load_model)")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
