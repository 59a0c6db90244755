"""Exact class-evidence maps: Σ E_c + offset_c = logit_c (dense, decomposed, slimmed; torch and ONNX Runtime),
heads that are not pool + linear refused with the reason, `inspectnet explain` and `inspectnet run --evidence`."""

import copy
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import timm
import torch
from PIL import Image

from inspectnet.analysis.explain.evidence import ClassEvidence, class_evidence, pooled_head
from inspectnet.analysis.heads.slim import slim_model
from inspectnet.cli import main
from inspectnet.core.errors import InspectnetError
from inspectnet.export.onnx import export_onnx
from inspectnet.models.heads import DecomposedLinear
from inspectnet.models.surgery import DECOMPOSED, set_submodule
from inspectnet.models.zoo import ZooModel, load_model
from inspectnet.runtime.classifier import OnnxClassifier, make_session
from inspectnet.runtime.overlays import evidence_overlay, map_status, write_overlays


def _dense(seed=0):
    torch.manual_seed(seed)
    return load_model("resnet18", num_classes=10, in_chans=1, input_size=64)  # layer4 maps are 2x2


def _decomposed(zm, seed=0):
    """The dense model with a random 3-feature support per class (what decompose_model builds from an influence map)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(10, 512, dtype=torch.bool)
    for c in range(10):
        mask[c, torch.randperm(512, generator=gen)[:3]] = True
    model = copy.deepcopy(zm.model)
    set_submodule(model, "fc", DecomposedLinear.from_linear(zm.head, mask))
    mod = {"kind": DECOMPOSED, "head_name": "fc", "in_features": 512, "out_features": 10, "bias": True}
    return ZooModel(model=model.eval(), source=zm.source, arch=zm.arch, num_classes=10, in_chans=1,
                    data_config=dict(zm.data_config), class_names=list(zm.class_names), head_name="fc",
                    modifications=[mod])


@pytest.fixture(scope="module")
def forms():
    zm = _dense()
    dzm = _decomposed(zm)
    szm, _ = slim_model(dzm, latency_reps=1)
    return {"dense": zm, "decomposed": dzm, "slimmed": szm}


def _sum_residual(ev):
    return float((ev.maps.double().sum((2, 3)) + ev.offset.double() - ev.logits.double().gather(1, ev.classes)).abs()
                 .max())


@pytest.mark.parametrize("form", ["dense", "decomposed", "slimmed"])
def test_evidence_sums_to_logit_minus_bias_in_torch(forms, form):
    zm = forms[form]
    x = torch.randn(4, 1, 64, 64)
    ev = class_evidence(zm, x, "all")
    assert ev.maps.shape == (4, 10, 2, 2)
    assert _sum_residual(ev) < 1e-5
    with torch.no_grad():
        torch.testing.assert_close(ev.logits, zm.model(x))
    torch.testing.assert_close(ev.offset[0], zm.head.bias.detach())


def test_decomposed_evidence_reads_only_the_influential_set(forms):
    """E_c = Σ_{j∈S_c} W[c,j] A_j / HW, computed here from the last map directly."""
    dzm = forms["decomposed"]
    x = torch.randn(3, 1, 64, 64)
    ev = class_evidence(dzm, x, "all")
    with torch.no_grad():
        a = dzm.model.forward_features(x).double()
    w = dzm.head.weight.detach().double()
    for c, support in enumerate(dzm.head.supports()):
        want = torch.einsum("j,bjhw->bhw", w[c, support], a[:, support]) / 4
        torch.testing.assert_close(ev.maps[:, c].double(), want, rtol=1e-5, atol=1e-6)
    dense = class_evidence(forms["dense"], x, "all")
    assert not torch.allclose(dense.maps, ev.maps)  # the dense head reads every feature


def test_real_lite0_evidence_is_exact_on_photos(lite0_weights):
    from inspectnet.data import load_data

    zm = load_model("shipped:efficientnet_lite0")
    ds = load_data("samples", zm.transform())
    x = torch.stack([ds[i][0] for i in range(3)])
    ev = class_evidence(zm, x, "top5")
    assert ev.maps.shape == (3, 5, 7, 7) and _sum_residual(ev) < 1e-4
    assert ev.classes[0, 0].item() in range(281, 286)  # chelsea is a cat


def _timm_zm(arch, head_name, size=64, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=5, **kwargs).eval()
    cfg = {"input_size": (3, size, size), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0,
           "interpolation": "bilinear", "crop_mode": "center"}
    return ZooModel(model=model, source="timm", arch=arch, num_classes=5, in_chans=3, data_config=cfg,
                    class_names=list("abcde"), head_name=head_name)


@pytest.mark.parametrize("arch,head,norm,kwargs,grid", [
    ("convnext_atto", "head.fc", "head.norm", {}, (2, 2)),                                       # LayerNorm after pooling
    ("vit_tiny_patch16_224", "head", "fc_norm", {"global_pool": "avg", "img_size": 64}, (4, 4)),  # token grid
])
def test_layer_norm_heads_and_vit_token_grid_are_exact(arch, head, norm, kwargs, grid):
    zm = _timm_zm(arch, head, **kwargs)
    with torch.no_grad():  # a trained-looking norm: γ and β away from their 1 / 0 initial values
        zm.model.get_submodule(norm).weight.normal_(1.0, 0.3)
        zm.model.get_submodule(norm).bias.normal_(0.0, 0.3)
    ev = class_evidence(zm, torch.randn(2, 3, 64, 64), "all")
    assert tuple(ev.maps.shape[2:]) == grid and _sum_residual(ev) < 1e-4
    assert not torch.allclose(ev.offset[0], zm.head.bias.detach())  # b + Wβ: the LayerNorm's shift is not a position


@pytest.mark.parametrize("arch,head,kwargs,reason", [
    ("vit_tiny_patch16_224", "head", {"img_size": 64}, "class token.*global_pool='avg'"),  # the way out is named
    ("resnet18", "fc", {"global_pool": "max"}, "'max' pooling"),
    ("vit_tiny_patch16_224", "head", {"img_size": 64, "global_pool": "map"}, "pools its tokens with attention"),
])
def test_heads_that_are_not_pool_plus_linear_are_refused_with_the_reason(arch, head, kwargs, reason):
    zm = _timm_zm(arch, head, **kwargs)
    with pytest.raises(InspectnetError, match=reason):
        pooled_head(zm)


@pytest.mark.parametrize("spec", ["torchvision:resnet18", "torchvision:mobilenet_v2"])
def test_torchvision_cnn_evidence_is_exact_from_the_module_graph(spec):
    """No forward_features/forward_head split: the map is located by the modules the model runs."""
    zm = load_model(spec, num_classes=3, input_size=64, seed=0)
    with torch.no_grad():
        zm.head.bias.normal_()
    ev = class_evidence(zm, torch.randn(2, 3, 64, 64), "all")
    assert ev.maps.shape == (2, 3, 2, 2) and _sum_residual(ev) < 1e-5
    assert float(ev.offset.abs().min()) > 0 and float(ev.maps.abs().max()) > 0  # both terms carry weight


def test_bad_class_choices_are_refused(forms):
    x = torch.randn(1, 1, 64, 64)
    for bad, match in (("12", "classes 0..9"), ("top11", "top1 to top10"), ("dog", "neither a class index")):
        with pytest.raises(InspectnetError, match=match):
            class_evidence(forms["dense"], x, bad)
    assert class_evidence(forms["dense"], x, "class_3,1").classes.tolist() == [[3, 1]]


@pytest.fixture(scope="module")
def exported(forms, tmp_path_factory):
    """Each form exported with the evidence output (top-2); slimmed by dynamo, the others by TorchScript."""
    out = tmp_path_factory.mktemp("evidence")
    files = {}
    for name, exporter in (("dense", "torchscript"), ("decomposed", "torchscript"), ("slimmed", "dynamo")):
        files[name] = export_onnx(forms[name], out / f"{name}.onnx", evidence=2, exporter=exporter, latency=False)
    return files


@pytest.mark.parametrize("form", ["dense", "decomposed", "slimmed"])
def test_onnx_evidence_matches_torch_and_sums_to_the_logits(forms, exported, form):
    res = exported[form]
    assert res.parity["evidence_sum_residual"] < 1e-4 and res.parity["evidence_max_abs_diff"] < 1e-5
    assert res.evidence["k"] == 2 and res.evidence["grid"] == [2, 2]
    clf = OnnxClassifier(res.path)
    x = np.random.default_rng(1).standard_normal((5, 1, 64, 64)).astype(np.float32)
    logits, maps, classes = clf.evidence(x)
    offset = np.asarray(clf.evidence_info["offset"])
    np.testing.assert_allclose(maps.astype(np.float64).sum((2, 3)) + offset[classes],
                               np.take_along_axis(logits, classes, 1), atol=1e-5)
    assert (classes == np.argsort(-logits, axis=1)[:, :2]).all()
    ref = class_evidence(forms[form], torch.from_numpy(x), torch.from_numpy(classes))
    np.testing.assert_allclose(maps, ref.maps.numpy(), atol=1e-5)


@pytest.mark.slow
def test_int8_export_keeps_the_evidence_output(forms, tmp_path):
    from inspectnet.export.onnx import calibration_inputs

    zm = forms["slimmed"]
    cal, labels = calibration_inputs(zm, "digits:train", limit=32)
    res = export_onnx(zm, tmp_path / "m.onnx", evidence=1, int8=True, calibration=cal, evaluation=(cal, labels),
                      latency=False)
    clf = OnnxClassifier(res.int8["path"])
    logits, maps, classes = clf.evidence(cal[:4])
    assert maps.shape == (4, 1, 2, 2) and (classes[:, 0] == logits.argmax(1)).all()
    assert -1.0 <= res.int8["evidence_correlation_with_fp32"] <= 1.0


def _branch_and_logits_side(graph):
    """(nodes only the evidence output depends on, nodes the logits depend on), as node names."""
    producer = {o: n for n in graph.node for o in n.output}

    def ancestors(name):
        found, stack = {}, [name]
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in found:
                found[node.name] = node
                stack.extend(node.input)
        return found

    evidence, logits = ancestors("evidence"), ancestors("logits")
    return [n for name, n in evidence.items() if name not in logits], logits


def test_int8_evidence_branch_dequantizes_only_the_gathered_rows(forms, tmp_path):
    """In the int8 graph the evidence branch reads no dequantized C x d classifier weight (ONNX Runtime would
    dequantize all of it on every call), holds no Q/DQ pair, and its maps are exactly the dequantized rows of
    the chosen classes times the feature map it multiplies."""
    from onnx import helper, numpy_helper

    from inspectnet.export.onnx import calibration_inputs

    zm = forms["decomposed"]  # after quantization its row gather reads the classifier weight's DequantizeLinear
    cal, labels = calibration_inputs(zm, "digits:train", limit=32)
    res = export_onnx(zm, tmp_path / "m.onnx", evidence=2, int8=True, calibration=cal, evaluation=(cal, labels),
                      latency=False)
    model = onnx.load(res.int8["path"])
    graph, inits = model.graph, {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    branch, logits_side = _branch_and_logits_side(graph)
    gemm = next(n for n in logits_side.values() if n.op_type == "Gemm")
    weight_dq = next(n for n in graph.node if n.output[0] == gemm.input[1])
    assert weight_dq.op_type == "DequantizeLinear" and inits[weight_dq.input[0]].dtype == np.int8
    assert not [n.name for n in graph.node if weight_dq.output[0] in n.input and n.name not in logits_side]
    assert not [n.op_type for n in branch if n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearMatMul")]
    # the branch's product in float, from the int8 rows: expose the map it multiplies and recompute the maps
    matmul = next(n for n in branch if n.op_type == "MatMul")
    graph.output.append(helper.make_tensor_value_info(matmul.input[1], onnx.TensorProto.FLOAT, None))
    x = cal[:8]
    logits, maps, classes, features = make_session(model.SerializeToString()).run(None, {"input": x})
    q, scale, zp = (inits[name] for name in weight_dq.input)
    rows = (q[classes].astype(np.float64) - zp[classes][..., None]) * scale[classes][..., None]
    want = np.einsum("bkd,bdp->bkp", rows, features.astype(np.float64)).reshape(maps.shape)
    want /= maps.shape[2] * maps.shape[3]
    np.testing.assert_allclose(maps, want, rtol=1e-5, atol=1e-7)
    assert np.abs(maps).max() > 0 and (classes == np.argsort(-logits, 1)[:, :2]).all()


@pytest.mark.parametrize("kwargs,match", [({"evidence": 11}, "has 10 classes"), ({"evidence": 0}, "expected 1 to 10"),
                                          ({"evidence": 1, "head_only": True}, "whole model")])
def test_bad_evidence_requests_are_refused_and_leave_nothing(forms, tmp_path, kwargs, match):
    with pytest.raises(InspectnetError, match=match):
        export_onnx(forms["dense"], tmp_path / "m.onnx", latency=False, **kwargs)
    assert not any(tmp_path.iterdir())


def test_gate_catches_wrong_evidence(forms, tmp_path, monkeypatch):
    """An evidence graph that differs from torch's (here: maps scaled in the exported graph) is refused."""
    original = ClassEvidence.maps_for

    def skewed(self, features, classes):
        maps = original(self, features, classes)
        return maps * 1.5 if torch.jit.is_tracing() else maps

    monkeypatch.setattr(ClassEvidence, "maps_for", skewed)
    with pytest.raises(InspectnetError, match="evidence output"):
        export_onnx(forms["dense"], tmp_path / "m.onnx", evidence=1, latency=False, exporter="torchscript")
    assert not (tmp_path / "m.onnx").exists()


def test_overlays_report_constant_and_nan_maps(tmp_path):
    view = np.full((8, 8, 3), 100, np.uint8)
    assert (evidence_overlay(view, np.ones((2, 2))) == view).all()
    assert (evidence_overlay(view, np.array([[np.nan, 1.0], [0.0, 0.0]])) == view).all()
    tinted = evidence_overlay(view, np.array([[1.0, -1.0], [0.0, 0.0]]))
    assert tinted[0, 0, 0] > 100 and tinted[0, 7, 2] > 100  # red for, blue against
    maps = np.stack([np.ones((2, 2)), np.full((2, 2), np.nan), np.eye(2)])
    doc = write_overlays(tmp_path, [{"name": "../../evil<x>.png", "view": view, "maps": maps, "classes": [0, 1, 2],
                                     "logits": np.array([4.0, 0.0, 2.0]), "offset": [0.0, 0.0, 0.0]}],
                         ["a", "b", "c"], {"model": "m"})
    assert [c["status"] for c in doc["images"][0]["classes"]] == ["constant", "nan", "ok"]
    assert [map_status(m) for m in maps] == ["constant", "nan", "ok"]
    assert all((tmp_path / c["path"]).parent == tmp_path for c in doc["images"][0]["classes"])  # stays under out
    assert doc["images"][0]["classes"][0]["residual"] == 0.0


def _digit_files(folder, sizes=((28, 28), (40, 30))):
    from inspectnet.data import load_data

    ds = load_data("mnist5k:test")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        path = folder / f"digit_{i}.png"
        ds.image(i).resize(size).save(path)
        paths.append(path)
    return paths


def test_explain_cli_writes_exact_overlays(forms, tmp_path, capsys):
    from inspectnet.models.zoo import save_model

    save_model(forms["decomposed"], tmp_path / "model")
    images = _digit_files(tmp_path / "img")
    assert main(["explain", str(tmp_path / "model"), *map(str, images), "--classes", "0,7", "--out",
                 str(tmp_path / "ex"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["head"] == "decomposed" and doc["grid"] == [2, 2]
    rows = [c for img in doc["images"] for c in img["classes"]]
    assert [c["index"] for c in rows] == [0, 7, 0, 7] and max(c["residual"] for c in rows) < 1e-4
    picture = Image.open(tmp_path / "ex" / rows[0]["path"])
    assert picture.size == (128, 64)  # the model's 64 px view | its overlay
    assert json.loads((tmp_path / "ex" / "evidence.json").read_text()) == doc


def test_explain_refuses_images_smaller_than_the_map_before_writing(lite0_weights, tmp_path, capsys):
    small = tmp_path / "small.png"
    Image.new("RGB", (5, 5), "white").save(small)
    assert main(["explain", "shipped:efficientnet_lite0", str(small), "--out", str(tmp_path / "ex")]) == 2
    assert "5x5 px, smaller than the 7x7 evidence map" in capsys.readouterr().err
    assert not (tmp_path / "ex").exists()


RUN_NO_TORCH = """
import json, sys
from inspectnet.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def test_run_evidence_writes_overlays_without_torch(forms, exported, tmp_path):
    images = _digit_files(tmp_path / "img")
    out = tmp_path / "overlays"
    proc = subprocess.run([sys.executable, "-c", RUN_NO_TORCH, "run", exported["slimmed"].path, *map(str, images),
                           "--evidence", "--out", str(out), "--json"], capture_output=True, text=True, timeout=120)
    status = json.loads(proc.stderr.strip().splitlines()[-1])
    assert status == {"rc": 0, "torch": False}, proc.stderr
    doc = json.loads(proc.stdout)["evidence"]
    assert doc["engine"] == "onnxruntime" and len(doc["images"]) == 2
    rows = [c for img in doc["images"] for c in img["classes"]]
    assert len(rows) == 4 and max(c["residual"] for c in rows) < 1e-4 and all((out / c["path"]).exists() for c in rows)
    # the same maps as torch on the same preprocessed inputs
    clf = OnnxClassifier(exported["slimmed"].path)
    x = clf.preprocess_images([Image.open(p) for p in images])
    ref = class_evidence(forms["slimmed"], torch.from_numpy(x), "top2")
    assert [c["index"] for c in rows] == ref.classes.flatten().tolist()
    np.testing.assert_allclose([c["evidence_sum"] for c in rows], ref.maps.double().sum((2, 3)).flatten().numpy(),
                               atol=1e-4)


def test_run_evidence_needs_an_evidence_export_and_a_folder(exported, tmp_path, capsys):
    plain = export_onnx(_dense(), tmp_path / "plain.onnx", latency=False, exporter="torchscript")
    images = _digit_files(tmp_path / "img")
    assert main(["run", plain.path, str(images[0]), "--evidence", "--out", str(tmp_path / "o")]) == 2
    assert "has no evidence output" in capsys.readouterr().err
    assert main(["run", exported["dense"].path, str(images[0]), "--evidence"]) == 2
    assert "--out" in capsys.readouterr().err


def test_channels_last_evidence_is_the_literal_formula_on_the_swin_map():
    """Swin's last map is (B, H, W, d): E_c(h, w) = Σ_j W[c, j]·A(h, w, j) / (H·W), written out here on that layout."""
    from inspectnet.models.families import family, family_model

    zm = family_model(family("Swin"), num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    ev = class_evidence(zm, x, "all")
    with torch.no_grad():
        a = zm.model.forward_features(x).double()  # (2, 2, 2, 768): channels last
    w = zm.head.weight.detach().double()
    want = torch.einsum("cj,bhwj->bchw", w, a) / (a.shape[1] * a.shape[2])
    torch.testing.assert_close(ev.maps.double(), want, rtol=1e-5, atol=1e-6)
    assert _sum_residual(ev) < 1e-4 and float(ev.offset.abs().min()) > 0


@pytest.mark.parametrize("spec,reason", [("torchvision:mobilenet_v3_small", "activation after global pooling"),
                                         ("mobilenetv3_small_050", "Conv2d and Hardswish after global pooling")])
def test_activation_after_pooling_is_refused_in_one_line(spec, reason):
    zm = load_model(spec, num_classes=3, input_size=64, seed=0)
    with pytest.raises(InspectnetError, match=reason) as err:
        pooled_head(zm)
    assert "\n" not in str(err.value)
