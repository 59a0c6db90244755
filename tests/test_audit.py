"""The audit pipeline: stages, cache reuse, failed stages in the card, another model's folder refused."""

import json
import shutil

import numpy as np
import pytest
import torch

from inspectnet.cli import main
from inspectnet.core.errors import InspectnetError
from inspectnet.data.subsets import spread_subset
from inspectnet.pipelines.audit import AuditConfig, run_audit
from inspectnet.runtime.classifier import OnnxClassifier

STAGES = ["probe", "decomposition", "rules", "sparsity", "linear_probes", "attributions", "trust", "explanations"]
PARAMS = dict(data="digits:train", eval_data="digits:test", limit=48, eval_limit=48, layers=["layer4"],
              attribution_images=2, ig_steps=4, top_units=2, k1=5, k2=3, explain_images=6, sanity_images=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ResNet18 (1 channel, 16 px) trained briefly on digits, so that it predicts several classes."""
    from inspectnet.data import load_data
    from inspectnet.models.zoo import load_model
    from inspectnet.training.loop import TrainConfig, train

    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16)
    out = tmp_path_factory.mktemp("model")
    ds = spread_subset(load_data("digits:train", zm.transform()), 160)
    train(zm, ds, out, TrainConfig(epochs=2, batch_size=32, lr=0.05), device="cpu")
    return out


@pytest.fixture(scope="module")
def audited(trained, tmp_path_factory):
    """One finished audit (folder, card); tests work on copies of the folder."""
    out = tmp_path_factory.mktemp("audit") / "a"
    return out, run_audit(_load(trained), AuditConfig(**PARAMS), out, log=None)


def _config(**kw):
    return AuditConfig(**{**PARAMS, **kw})


def _load(path):
    from inspectnet.models.zoo import load_model

    return load_model(str(path))


def _copy(audited, tmp_path):
    dest = tmp_path / "audit"
    shutil.copytree(audited[0], dest)
    return dest


def test_first_audit_runs_every_stage_and_writes_the_card(audited, trained):
    out, first = audited
    assert list(first["sections"]) == STAGES
    assert all(s["status"] == "ok" and not s["cached"] for s in first["sections"].values()), \
        {k: s.get("error") for k, s in first["sections"].items()}
    for name in ("card.json", "README.md", "card.html"):
        assert (out / name).exists()
    page = (out / "card.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 + 1 + 1  # IG/Grad-CAM pictures, units, tree
    assert 'src="attributions/' not in page  # self-contained: no file references
    dec = first["sections"]["decomposition"]["result"]
    assert dec["k2"] == 3 and all(len(p["features"]) <= 3 for p in dec["per_class"])
    # the exact contributions: mean over class c of W[c, j] * f_j, recomputed here from the record
    from inspectnet.probe.record import ProbeRecord

    ev = ProbeRecord.load(out / "probe" / "eval")
    w = _load(trained).head.weight.detach().numpy()
    p0 = next(p for p in dec["per_class"] if p["mean_contribution"])
    sel = np.asarray(ev.labels) == p0["class"]
    want = [float((np.asarray(ev.features)[sel, j] * w[p0["class"], j]).mean()) for j in p0["features"]]
    np.testing.assert_allclose(p0["mean_contribution"], want, rtol=1e-4, atol=1e-6)
    assert first["sections"]["rules"]["result"]["layer"] == "layer4"
    assert first["sections"]["probe"]["result"]["analysed_layer"] == "layer4"  # the last probed layer
    card = json.loads((out / "card.json").read_text())
    assert card["sections"]["rules"]["title"] == "Rules extracted from the model's filters"
    assert all(sec["title"] for sec in card["sections"].values()) and card["config"]["layer"] is None


def test_explanations_stage_measures_every_form_and_reports_unrankable_maps(audited):
    out, doc = audited
    r = doc["sections"]["explanations"]["result"]
    assert {f["name"]: f["status"] for f in r["forms"]} == {"full": "ok", "decomposed": "ok", "slimmed": "ok",
                                                            "int8 (of slimmed)": "missing"}
    assert "--export" in r["forms"][3]["error"]
    rows = {(x["form"], x["method"], tuple(x["map_size"])): x for x in r["rows"]}
    ig = rows[("full", "integrated_gradients", (16, 16))]
    assert ig["evaluated"] == 6 and ig["forward_passes"] == 6 * 28 and "vs_random" in ig
    evidence = rows[("decomposed", "evidence", (1, 1))]  # 16 px input: layer4 is 1x1, nothing to rank
    assert evidence["evaluated"] == 0 and evidence["constant_maps"] == 6 and evidence["deletion_auc"] is None
    assert r["sanity"]["full"]["methods"]["evidence"]["passes"] is None
    assert r["sanity"]["full"]["methods"]["random"]["passes"] is None  # a 1x1 random map cannot be ranked either
    # the cascade's 3 images spread over the 6 explained ones (first and last in), not the first 3: folders
    # are class-sorted, so the first few would be one class
    assert r["sanity"]["full"]["samples"] == [0, 2, 5] and r["sanity"]["full"]["images"] == 3
    assert "Images: 3 of the 6 explained images, evenly spread." in (out / "README.md").read_text()
    assert r["cost"]["forward_passes_per_image_per_method"] == 28.0
    assert all((out / f["path"]).exists() for f in r["figures"]) and len(r["figures"]) == 3
    page = (out / "card.html").read_text()
    assert "Explanation quality by model form" in page and page.count("data:image/png;base64,") >= 4 + 3


def test_explicit_layer_is_probed_and_analysed_by_rules_and_attributions(audited, trained, tmp_path):
    out = _copy(audited, tmp_path)
    doc = run_audit(_load(trained), _config(layer="layer3"), out, log=None)
    probe = doc["sections"]["probe"]["result"]
    assert probe["layers"] == ["layer4", "layer3"] and probe["analysed_layer"] == "layer3"
    assert doc["sections"]["rules"]["result"]["layer"] == "layer3"
    assert doc["sections"]["attributions"]["result"]["units"]["layer"] == "layer3"
    assert not any(s["cached"] for s in doc["sections"].values())  # the probe key changed, so everything after it


def test_probed_layers_resolve_the_analysed_layer_once(tiny_digits_model):
    from inspectnet.pipelines.audit import probed_layers

    zm = tiny_digits_model
    assert probed_layers(zm, _config(layers=["layer2", "layer4"])) == (["layer2", "layer4"], "layer4")
    assert probed_layers(zm, _config(layers=["layer2", "layer4"], layer="layer2")) == (["layer2", "layer4"], "layer2")
    assert probed_layers(zm, _config(layers=["layer2"], layer="last_conv")) == (["layer2", "layer4.1.conv2"],
                                                                               "layer4.1.conv2")
    for bad in ("layer*", "pre_logits"):
        with pytest.raises(InspectnetError, match="name one layer"):
            probed_layers(zm, _config(layer=bad))
    with pytest.raises(InspectnetError, match="closest"):
        probed_layers(zm, _config(layer="layer44"))


def test_second_audit_reuses_every_stage(audited, trained, tmp_path):
    out = _copy(audited, tmp_path)
    first = audited[1]
    second = run_audit(_load(trained), _config(), out, log=None)
    assert all(s["cached"] for s in second["sections"].values())  # every stage skipped, none re-run
    assert second["timing"]["stages_run_seconds"] == 0.0
    assert second["sections"]["rules"]["result"] == first["sections"]["rules"]["result"]
    third = run_audit(_load(trained), _config(k2=2), out, log=None)  # only the decomposition and its readers
    assert [n for n, s in third["sections"].items() if not s["cached"]] == ["decomposition", "attributions",
                                                                            "explanations"]
    assert all(len(p["features"]) <= 2 for p in third["sections"]["decomposition"]["result"]["per_class"])
    shutil.rmtree(out / "rules")  # a stage whose files were deleted is recomputed, not trusted
    fourth = run_audit(_load(trained), _config(k2=2), out, log=None)
    assert [n for n, s in fourth["sections"].items() if not s["cached"]] == ["rules"]
    assert (out / "rules" / "tree.png").exists()


def test_failing_stage_is_marked_and_card_still_written(audited, trained, tmp_path):
    out = _copy(audited, tmp_path)
    bad = tmp_path / "concepts_without_images"  # passes the up-front check (concepts.json), fails in the stage
    bad.mkdir()
    (bad / "concepts.json").write_text('{"concepts": {"red": "colour"}}')
    bad = str(bad)
    doc = run_audit(_load(trained), _config(concepts=bad), out, log=None)
    sec = doc["sections"]["dissection"]
    assert sec["status"] == "failed" and "concepts_without_images has no images/" in sec["error"]
    assert doc["sections"]["rules"]["status"] == "ok"
    card = json.loads((out / "card.json").read_text())
    assert card["sections"]["dissection"]["status"] == "failed"
    assert "This section failed" in (out / "card.html").read_text()
    assert "This section failed" in (out / "README.md").read_text()
    again = run_audit(_load(trained), _config(concepts=bad), out, log=None)  # failures are never cached
    assert not again["sections"]["dissection"]["cached"] and again["sections"]["probe"]["cached"]


def test_another_models_audit_is_refused(audited, tmp_path, tiny_digits_model):
    out = _copy(audited, tmp_path)
    before = (out / "card.json").read_text()
    with pytest.raises(InspectnetError, match="another model"):
        run_audit(tiny_digits_model, _config(), out, log=None)
    assert (out / "card.json").read_text() == before  # nothing mixed in
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InspectnetError, match="holds no audit"):
        run_audit(tiny_digits_model, _config(), other, log=None)


def test_class_names_with_markup_are_escaped(tmp_path):
    """A folder dataset whose class names and file names carry HTML/Markdown metacharacters."""
    from inspectnet.data import load_data
    from inspectnet.models.zoo import load_model

    digits = load_data("digits")
    evil = ["<script>alert(1)", 'b&"*_|`x']
    for c, name in enumerate(evil):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in np.flatnonzero(np.asarray(digits.labels) == c)[:8]:
            digits.image(int(i)).save(folder / f"<img src=x onerror=alert({i})>.png")
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=2, in_chans=1, input_size=16)
    out = tmp_path / "audit"
    doc = run_audit(zm, AuditConfig(data=str(tmp_path / "data"), limit=16, layers=["layer4"], attribution_images=2,
                                    ig_steps=4, top_units=1), out, log=None)
    assert doc["model"]["class_names"] == sorted(evil)
    page = (out / "card.html").read_text()
    readme = (out / "README.md").read_text()
    for text in (page, readme):
        assert "<script>alert" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)" in page and "&lt;script&gt;alert(1)" in readme
    assert page.count("<script>") == 1  # only the page's own table-sorting script


def test_cli_audit_reuses_cache_then_card_rerenders(audited, trained, tmp_path, capsys):
    out = _copy(audited, tmp_path)
    rc = main(["audit", str(trained), "digits:train", "--eval", "digits:test", "--limit", "48", "--eval-limit", "48",
               "--layers", "layer4", "--images", "2", "--ig-steps", "4", "--top-units", "2", "--k2", "3",
               "--explain-images", "6", "--sanity-images", "3", "--out", str(out)])
    assert rc == 0
    card = json.loads((out / "card.json").read_text())
    assert all(s["cached"] for s in card["sections"].values())  # the CLI keys its stages like the library
    cmd = card["reproduce"]["command"]
    assert cmd.startswith(f"inspectnet audit {trained} digits:train --out ") and "--k2 3" in cmd
    html_before, md_before = (out / "card.html").read_text(), (out / "README.md").read_text()
    (out / "card.html").unlink()
    (out / "README.md").unlink()
    assert main(["card", str(out), "--copy-to", str(tmp_path / "published")]) == 0
    assert (out / "card.html").read_text() == html_before and (out / "README.md").read_text() == md_before
    pub = tmp_path / "published"
    assert (pub / "rules" / "tree.png").exists() and not (pub / "probe").exists()
    assert (pub / "card.html").read_text() == html_before
    assert main(["card", str(tmp_path / "missing")]) == 2


def test_receptive_fields_use_each_units_quantile_and_top_images(tiny_digits_model, tmp_path):
    from inspectnet.analysis.attributions import receptive_fields
    from inspectnet.data import load_data
    from inspectnet.models.layers import eval_mode
    from inspectnet.probe.hooks import Probe

    zm = tiny_digits_model
    ds = load_data("digits", zm.transform())
    acts = np.random.default_rng(0).random((40, 256))
    rows = receptive_fields(zm, ds, acts, "layer3", [1, 5], tmp_path, top_n=3, quantile=0.9, sample=40,
                            batch_size=16)
    x = torch.stack([ds[i][0] for i in range(40)])
    with eval_mode(zm.model), torch.no_grad(), Probe(zm.model, ["layer3"], reducer="full") as probe:
        zm.model(x)
        maps = probe.outputs["layer3"]
    for row in rows:
        k = row["unit"]
        assert row["threshold"] == pytest.approx(float(torch.quantile(maps[:, k].flatten().float(), 0.9)), rel=1e-5)
        assert row["top_images"] == [int(i) for i in np.argsort(-acts[:, k])[:3]]
        masks = [(maps[i, k].max() > row["threshold"]).item() for i in row["top_images"]]
        assert row["empty_tiles"] == masks.count(False)
    assert (tmp_path / "receptive_fields.png").exists()


def test_feature_maps_state_their_resolution_and_which_are_zero(tiny_digits_model, tmp_path):
    """A blank map is named as zero on the image (checked against the maps themselves), and the map
    size is the forward_features grid, not the input's."""
    from inspectnet.analysis.attributions import feature_maps, influential_feature_maps
    from inspectnet.data import load_data

    zm = tiny_digits_model
    ds = load_data("digits", zm.transform())
    labels = np.asarray(ds.labels[:20])
    x = torch.stack([ds[int(np.flatnonzero(labels == 3)[0])][0]])
    maps = feature_maps(zm, x)[0]
    zero = [int(f) for f in torch.nonzero(maps.flatten(1).abs().amax(1) == 0).flatten()][:2]
    busy = [int(f) for f in torch.argsort(-maps.flatten(1).amax(1))[:1]]
    supports = [[] for _ in range(10)]
    supports[3] = busy + zero
    rows = influential_feature_maps(zm, ds, labels, supports, tmp_path)
    assert [r["class"] for r in rows] == [3]
    assert len(zero) == 2 and rows[0]["zero_features"] == zero and rows[0]["map_size"] == list(maps.shape[1:])
    assert rows[0]["map_size"] != rows[0]["input_size"] == [16, 16]
    assert (tmp_path / "class_003.png").exists()


def test_export_ships_the_better_decomposed_head_slimmed_and_the_card_names_it(audited, trained, tmp_path):
    """With retraining and export: the exported ONNX is the slimmed form of the better of the retrained and
    un-retrained decomposed heads (same accuracy as that head on the eval data), listed with its fingerprint,
    accuracy and size next to the dense model; the card states the sample counts."""
    out = _copy(audited, tmp_path)
    doc = run_audit(_load(trained), _config(export=True, retrain_epochs=1), out, log=None)
    dec, exp = doc["sections"]["decomposition"]["result"], doc["sections"]["export"]["result"]
    best = max(dec["accuracy_decomposed"], dec["accuracy_retrained"])
    assert ("retrained" in dec["model_form"]) == (dec["accuracy_retrained"] >= dec["accuracy_decomposed"])
    assert exp["model"] == f"slimmed model, {dec['model_form']}" and "error" not in exp["slimming"]
    dense, shipped = exp["models"]
    assert dense["fingerprint"] == doc["model"]["fingerprint"] != shipped["fingerprint"]
    assert shipped["accuracy"] == pytest.approx(best) and shipped["n"] == dense["n"] == 48
    assert shipped["parameters"] < dense["parameters"]
    text = (out / "README.md").read_text()
    assert f"Exported: the slimmed model, {dec['model_form']}" in text
    assert "48 of the" in text and "an evenly spread subset (--limit 48)" in text and "(n = 48)" in text
    assert "full\\_tree/rules.txt" in text or "full_tree/rules.txt" in text
    assert (out / "rules" / "full_tree" / "rules.txt").exists() and (out / "rules" / "fidelity_curve.png").exists()


def test_export_ships_the_dense_model_when_the_decomposed_one_loses_more_than_the_allowed_drop(audited, trained,
                                                                                              tmp_path):
    """A decomposed head that scores below the dense model by more than --export-max-drop is not shipped: the
    dense model is exported (its ONNX fingerprint-equal twin), and the card says why with both accuracies."""
    out = _copy(audited, tmp_path)
    doc = run_audit(_load(trained), _config(export=True, k2=1, export_max_drop=0.0), out, log=None)
    exp = doc["sections"]["export"]["result"]
    dense, candidate = exp["models"]
    assert candidate["accuracy"] < dense["accuracy"]  # one feature per class: the decomposed head loses accuracy
    assert exp["model"] == "dense model (as audited)" and dense["model"] == "exported: dense model (as audited)"
    assert f"scores {candidate['accuracy'] * 100:.1f} %" in exp["dense_instead"]
    assert f"the dense model's {dense['accuracy'] * 100:.1f} %" in exp["dense_instead"]
    x = torch.rand(3, 1, 16, 16)
    with torch.inference_mode():
        want = _load(trained).model.eval()(x).numpy()
    got = OnnxClassifier(out / exp["path"]).logits(x.numpy())
    assert abs(got - want).max() < 1e-4  # the dense model's logits, not the decomposed one's
    assert "Not the decomposed model: the " in (out / "README.md").read_text()
    lenient = run_audit(_load(trained), _config(export=True, k2=1, export_max_drop=1.0), out, log=None)
    assert not lenient["sections"]["export"]["result"]["dense_instead"]
    with pytest.raises(InspectnetError, match="export_max_drop="):
        run_audit(_load(trained), _config(export=True, export_max_drop=1.5), out, log=None)


def test_a_stage_rerun_removes_only_the_files_it_wrote(audited, trained, tmp_path):
    """inspectnet never removes what it did not write, also inside its own stage folders."""
    out = _copy(audited, tmp_path)
    state = json.loads((out / "audit.json").read_text())
    assert state["stages"]["rules"]["files"] == ["rules/fidelity_curve.png", "rules/full_tree/rules.json",
                                                 "rules/full_tree/rules.txt", "rules/rules.json", "rules/rules.txt",
                                                 "rules/tree.png"]
    (out / "rules" / "mine.txt").write_text("the user's notes")
    (out / "notes.md").write_text("the user's notes")
    doc = run_audit(_load(trained), _config(seed=1), out, log=None)  # the seed keys rules: it runs again
    assert not doc["sections"]["rules"]["cached"] and doc["sections"]["rules"]["status"] == "ok"
    assert (out / "rules" / "mine.txt").read_text() == "the user's notes"
    assert (out / "notes.md").read_text() == "the user's notes"
    state = json.loads((out / "audit.json").read_text())
    assert "rules/mine.txt" not in state["stages"]["rules"]["files"] and (out / "rules" / "tree.png").exists()
    (out / "rules" / "tree.png").unlink()  # a stage with a file missing is recomputed, not trusted
    again = run_audit(_load(trained), _config(seed=1), out, log=None)
    assert [n for n, s in again["sections"].items() if not s["cached"]] == ["rules"]


def test_a_section_that_fails_later_marks_the_card_and_exits_3(audited, trained, tmp_path, capfd):
    out = _copy(audited, tmp_path)
    concepts = tmp_path / "concepts_without_images"
    concepts.mkdir()
    (concepts / "concepts.json").write_text('{"concepts": {"red": "colour"}}')
    capfd.readouterr()
    rc = main(["audit", str(trained), "digits:train", "--eval", "digits:test", "--limit", "48", "--eval-limit", "48",
               "--layers", "layer4", "--images", "2", "--ig-steps", "4", "--top-units", "2", "--k2", "3",
               "--concepts", str(concepts), "--out", str(out)])
    _, err = capfd.readouterr()
    errors = [line for line in err.splitlines() if "inspectnet: error:" in line]
    assert rc == 3 and len(errors) == 1 and "dissection" in errors[0] and "Traceback" not in err
    card = json.loads((out / "card.json").read_text())
    assert card["sections"]["dissection"]["status"] == "failed" and card["sections"]["rules"]["status"] == "ok"


def test_the_audit_leaves_the_callers_model_object_as_it_was(tmp_path):
    """A model with placeholder class names audited on named data: the audit names the classes after the data,
    but the caller's object keeps its names, its train/eval flags, its device and dtype, and its weights."""
    from inspectnet.models.zoo import load_model

    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16, seed=0)
    zm.model.train()
    zm.model.layer1.eval()  # mixed flags, so that a blanket train() or eval() afterwards would show
    before = (list(zm.class_names), [m.training for m in zm.model.modules()], zm.fingerprint(),
              {(p.device, p.dtype) for p in zm.model.parameters()}, dict(zm.data_config))
    config = AuditConfig(data="digits:train", limit=32, layers=["layer4"], attribution_images=1, ig_steps=2,
                         top_units=1, k1=4, k2=2, sanity_images=0)
    doc = run_audit(zm, config, tmp_path / "a", log=None)
    assert doc["model"]["class_names"][:2] == ["0", "1"]  # the audit did rename the classes: for itself only
    after = (list(zm.class_names), [m.training for m in zm.model.modules()], zm.fingerprint(),
             {(p.device, p.dtype) for p in zm.model.parameters()}, dict(zm.data_config))
    assert after == before and before[0][0] != "0"
