import json

import numpy as np
import pytest
import torch

from inspectnet import InspectnetError, ProbeRecord, load_data, run_probe
from inspectnet.probe.hooks import absmean


def _direct(zm, ds, n):
    x = torch.stack([ds[i][0] for i in range(n)])
    feats = {}
    h = zm.model.layer3.register_forward_hook(lambda m, i, o: feats.update(layer3=absmean(o)))
    with torch.no_grad():
        logits = zm.model.eval()(x)
    h.remove()
    return logits.numpy(), feats["layer3"].numpy()


def test_record_matches_direct_forward(tmp_path, tiny_digits_model):
    zm = tiny_digits_model
    ds = load_data("digits", zm.transform())
    rec = run_probe(zm, ds, "layer3,pre_logits", tmp_path / "r", batch_size=7, limit=30)
    logits, layer3 = _direct(zm, ds, 30)
    np.testing.assert_allclose(rec.logits, logits, atol=1e-5)
    np.testing.assert_allclose(rec.activations("layer3"), layer3, atol=1e-5)
    # pre_logits is the head's input: the head applied to it reproduces the logits
    head = zm.head
    np.testing.assert_allclose(rec.features @ head.weight.detach().numpy().T + head.bias.detach().numpy(),
                               logits, atol=1e-4)
    assert list(rec.labels) == list(ds.labels[:30]) and rec.layers == ["layer3"]
    m = rec.manifest
    assert m["complete"] and m["num_samples"] == 30 and m["identity"]["weights_fingerprint"] == zm.fingerprint()
    assert isinstance(rec.activations("layer3"), np.memmap)


def test_interrupted_probe_resumes_to_identical_record(tmp_path, tiny_digits_model, interrupt_at):
    zm = tiny_digits_model
    ds = load_data("digits", zm.transform())
    full = run_probe(zm, ds, "layer4", tmp_path / "full", batch_size=8, limit=40)

    stopping = interrupt_at(ds, 21)
    with pytest.raises(KeyboardInterrupt):
        run_probe(zm, stopping, "layer4", tmp_path / "part", batch_size=8, limit=40)
    with pytest.raises(InspectnetError, match="incomplete"):
        ProbeRecord.load(tmp_path / "part")
    assert json.loads((tmp_path / "part" / "progress.json").read_text())["done"] == 16
    resumed = run_probe(zm, ds, "layer4", tmp_path / "part", batch_size=8, limit=40)
    for name in ("logits", "features", "labels"):
        assert np.array_equal(getattr(resumed, name), getattr(full, name))
    assert np.array_equal(resumed.activations("layer4"), full.activations("layer4"))


def test_folder_with_another_record_is_refused(tmp_path, tiny_digits_model):
    zm = tiny_digits_model
    ds = load_data("digits", zm.transform())
    run_probe(zm, ds, "layer4", tmp_path / "r", limit=8)
    with pytest.raises(InspectnetError, match="differs in: layers"):
        run_probe(zm, ds, "layer3", tmp_path / "r", limit=8)
    with pytest.raises(InspectnetError, match="differs in: data"):
        run_probe(zm, load_data("mnist5k:test", zm.transform()), "layer4", tmp_path / "r", limit=8)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InspectnetError, match="not empty"):
        run_probe(zm, ds, "layer4", tmp_path / "other", limit=8)
    with pytest.raises(InspectnetError, match="no layer 'layer2'"):
        ProbeRecord.load(tmp_path / "r").activations("layer2")
