"""`export --concepts`: the ONNX file's concepts output against the discovery's own codes in ONNX Runtime."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from inspectnet.analysis.concepts.discover import as_cells, discover_concepts
from inspectnet.analysis.concepts.pictures import write_concepts
from inspectnet.cli import main
from inspectnet.core.errors import InspectnetError
from inspectnet.data import load_data
from inspectnet.export.concepts import KEY_CONCEPTS
from inspectnet.export.onnx import export_onnx
from inspectnet.models.zoo import load_model

MODEL = ["resnet18", "--num-classes", "3", "--input-size", "64"]   # the same seeded weights in both commands


def _onnx_outputs(path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, codes = session.run(["logits", "concepts"], {"input": x})
    return logits, codes, json.loads(session.get_modelmeta().custom_metadata_map[KEY_CONCEPTS])


def _topk_sae_numpy(cells: np.ndarray, saved, active: int) -> np.ndarray:
    """A literal transcription of the TopK autoencoder's codes from the arrays in basis.npz."""
    pre = np.maximum((cells / saved["scale"] - saved["dec_bias"]) @ saved["encoder"].T + saved["enc_bias"], 0)
    assert ((pre > 0).sum(1) > active).all()   # the TopK step matters on these cells
    keep = np.argsort(-pre, axis=1, kind="stable")[:, :active]
    out = np.zeros_like(pre)
    np.put_along_axis(out, keep, np.take_along_axis(pre, keep, 1), 1)
    return out


def test_export_concepts_command_emits_the_saved_autoencoders_codes_in_onnx_runtime(tmp_path):
    folder, out = tmp_path / "c", tmp_path / "m.onnx"
    assert main(["concepts", *MODEL, "shapes?n=30", "--method", "sae", "--k", "8", "--active", "2",
                 "--seeds", "1", "--no-pictures",
                 "--out", str(folder)]) == 0
    assert main(["export", *MODEL, "--out", str(out), "--concepts", str(folder), "--no-latency"]) == 0
    report = json.loads(out.with_name("m.export.json").read_text())
    assert report["concepts"]["k"] == 8 and report["parity"]["concepts_max_abs_diff"] <= 1e-4
    zm = load_model("resnet18", num_classes=3, input_size=64, seed=0)
    x = np.random.default_rng(5).random((3, 3, 64, 64), dtype=np.float32)
    logits, codes, meta = _onnx_outputs(out, x)
    assert codes.shape == (3, 8, 2, 2) and meta["layer"] == "layer4" and meta["method"] == "sae"
    with torch.no_grad():
        features = zm.model.forward_features(torch.from_numpy(x))
        assert np.allclose(logits, zm.model(torch.from_numpy(x)).numpy(), atol=1e-4)
    with np.load(folder / "basis.npz") as saved:
        want = _topk_sae_numpy(as_cells(features).numpy().astype(np.float64), saved, int(saved["active"]))
    got = codes.transpose(0, 2, 3, 1).reshape(-1, 8)
    assert want.max() > 0 and ((got > 0).sum(1) <= 2).all()
    assert np.abs(got - want).max() <= 1e-5 * want.max()


@pytest.mark.slow   # 200 unrolled NMF updates: the export alone takes ~20 s
def test_exported_nmf_concepts_match_the_discovery_codes_per_image(tmp_path):
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=3, input_size=64)
    c = discover_concepts(zm, load_data("shapes?n=30"), "last_stage", "nmf", k=5, seeds=1, epochs=2)
    res = export_onnx(zm, tmp_path / "m.onnx", concepts=c, latency=False)
    assert res.concepts["method"] == "nmf" and res.parity["concepts_max_abs_diff"] <= res.parity["concepts_tolerance"]
    x = np.random.default_rng(5).random((3, 3, 64, 64), dtype=np.float32)
    _, codes, _ = _onnx_outputs(tmp_path / "m.onnx", x)
    with torch.no_grad():
        maps = zm.model.forward_features(torch.from_numpy(x))
    # the discovery's encoder on one image at a time (its start and stopping rule are per batch of cells)
    want = np.stack([c.factoriser.encode(as_cells(maps[i:i + 1])).numpy().T.reshape(5, 2, 2) for i in range(3)])
    assert want.max() > 0 and np.abs(codes - want).max() <= 0.02 * want.max()


def test_concepts_of_other_weights_or_an_earlier_layer_are_refused(tmp_path):
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=3, input_size=64)
    data = load_data("shapes?n=10")
    early = discover_concepts(zm, data, "layer3", "sae", k=3, seeds=1, epochs=1, active=2, check_images=2,
                               random_draws=1)
    with pytest.raises(InspectnetError, match="discovered in layer 'layer3'.*--layer last_stage"):
        export_onnx(zm, tmp_path / "a.onnx", concepts=early, latency=False)
    write_concepts(discover_concepts(zm, data, "layer4", "sae", k=3, seeds=1, epochs=1, active=2), tmp_path / "c")
    other = load_model("resnet18", num_classes=3, input_size=64, seed=1)
    with pytest.raises(InspectnetError, match="discovered in weights"):
        export_onnx(other, tmp_path / "b.onnx", concepts=tmp_path / "c", latency=False)
    with pytest.raises(InspectnetError, match="whole-model fp32 export"):
        export_onnx(zm, tmp_path / "d.onnx", concepts=tmp_path / "c", evidence=1, latency=False)
    assert not list(tmp_path.glob("*.onnx"))
