"""The explanations section of the card: its tables, the Hugging Face model-index metrics (validated offline
by huggingface_hub's own ModelCard / ModelCardData), and escaping of every name in it."""

import pytest

from inspectnet.pipelines.audit.card import card_sections, render_html, render_markdown, write_card
from inspectnet.reports.card import CARD_SCHEMA, CARD_SCHEMA_VERSION, card_view, faithfulness_metrics

EVIL = '<script>alert("x")</script>'


def _row(form, method, size, deletion, insertion, vs=None, evaluated=6):
    row = {"form": form, "method": method, "status": "ok", "images": 6, "evaluated": evaluated, "constant_maps":
           6 - evaluated, "nan_maps": 0, "baseline": "blur", "deletion_auc": deletion, "deletion_auc_se": 0.01,
           "insertion_auc": insertion, "insertion_auc_se": 0.02, "road_morf": 0.2, "road_morf_se": 0.01,
           "road_lerf": 0.7, "road_lerf_se": 0.01, "forward_passes": 28 * evaluated, "map_seconds_per_image": 0.01,
           "map_size": size}
    if vs is not None:
        row["vs_random"] = {"deletion_auc": vs[0], "deletion_auc_se": 0.01, "insertion_auc": vs[1],
                            "insertion_auc_se": 0.01, "paired_images": evaluated, "beats_control": vs[2]}
    return row


def _sanity(evidence_rho):
    return {"blocks": ["fc", "conv1"], "steps": [1, 11], "total_blocks": 11, "threshold": 0.5, "images": 3,
            "methods": {"evidence": {"spearman": [0.4, evidence_rho], "abs_spearman_final": abs(evidence_rho),
                                     "passes": abs(evidence_rho) < 0.5, "skipped": 0},
                        "random": {"spearman": [1.0, 1.0], "abs_spearman_final": 1.0, "passes": False, "skipped": 0}}}


def _card(evil=EVIL):
    """A card with the probe section and an explanations section whose every name carries ``evil``."""
    doc = {
        "schema": CARD_SCHEMA, "schema_version": CARD_SCHEMA_VERSION, "generated": "2026-01-01T00:00:00Z",
        "model": {"spec": f"timm:{evil}", "source": "timm", "arch": evil, "base": None, "num_classes": 2, "in_chans": 1,
                  "input_size": [1, 64, 64], "head": "fc", "fingerprint": "abc", "class_names": [evil, "b"],
                  "modifications": []},
        "data": {"train": evil, "eval": evil, "limit": 8, "in_sample": True}, "config": {},
        "sections": {"probe": {"status": "ok", "seconds": 1.0, "title": "Probed samples and layers", "result": {
            "layers": ["layer4"], "train": {"data": evil, "samples": 8},
            "eval": {"data": evil, "samples": 8, "in_sample": True}, "accuracy": 0.5, "feature_dim": 4}}},
        "timing": {"total_seconds": 3.1, "stages_run_seconds": 3.1, "stages_cached_seconds": 0.0},
        "reproduce": {"command": "inspectnet audit x y --out d", "versions": {"torch": "2"}},
    }
    doc["sections"]["explanations"] = {"status": "ok", "seconds": 3.0, "title": "Explanation faithfulness", "result": {
        "images": 6, "data": f"digits:{evil}", "ig_steps": 4,
        "faithfulness": {"steps": 10, "baseline": "blur", "road_fractions": [0.2, 0.4, 0.6, 0.8], "road_noise": 0.01,
                         "road_size": 64, "batch_size": 64, "seed": 0},
        "forms": [{"name": "full", "status": "ok", "engine": "torch", "accuracy": 0.9, "agreement_with_full": 1.0},
                  {"name": f"slimmed {evil}", "status": "ok", "engine": "torch", "accuracy": 0.85,
                   "agreement_with_full": 0.95},
                  {"name": "int8 (of slimmed)", "status": "missing", "error": f"not evaluated: {evil}"}],
        "rows": [_row("full", "evidence", [2, 2], 0.11, 0.81, (-0.2, 0.3, True)),
                 _row("full", "integrated_gradients", [16, 16], 0.15, 0.7, (-0.01, 0.02, False)),
                 _row("full", "random", [2, 2], 0.31, 0.51), _row("full", "random", [16, 16], 0.16, 0.68),
                 _row(f"slimmed {evil}", "evidence", [2, 2], 0.14, 0.77, (-0.1, 0.2, True)),
                 _row(f"slimmed {evil}", "random", [2, 2], 0.3, 0.5),
                 {"form": "full", "method": "gradcam", "status": "refused", "error": f"no conv {evil}"}],
        "sanity": {"full": _sanity(0.1), f"slimmed {evil}": _sanity(0.7)},
        "cost": {"forward_passes_per_image_per_method": 28.0, "planned": 28, "rows": 6, "map_seconds_per_image": {}},
        "figures": []}}
    return doc


def test_hugging_face_model_card_loads_and_validates_offline(tmp_path, monkeypatch):
    from huggingface_hub import ModelCard, ModelCardData

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write_card(_card("plain"), tmp_path)["markdown"]
    card = ModelCard.load(path, ignore_metadata_errors=False)  # parses the YAML and builds EvalResults, or raises
    results = {r.metric_name: r for r in card.data.eval_results}
    deletion = results["deletion AUC of the class-evidence map (blur, lower is better)"]
    assert deletion.metric_type == "deletion_auc" and deletion.metric_value == pytest.approx(0.11)
    assert results["insertion AUC of the random control (blur, higher is better)"].metric_value == pytest.approx(0.51)
    assert results["accuracy"].metric_value == pytest.approx(0.5) and deletion.task_type == "image-classification"
    again = ModelCardData(**card.data.to_dict())  # the model-index round-trips through ModelCardData's own checks
    assert [r.metric_value for r in again.eval_results] == [r.metric_value for r in card.data.eval_results]


def test_faithfulness_metrics_take_the_full_models_evidence_and_its_control():
    labels = [(label.split(" (")[0], kind, value) for label, kind, value in faithfulness_metrics(_card())]
    assert labels == [("deletion AUC of the class-evidence map", "deletion_auc", 0.11),
                      ("insertion AUC of the class-evidence map", "insertion_auc", 0.81),
                      ("deletion AUC of the random control", "deletion_auc", 0.31),
                      ("insertion AUC of the random control", "insertion_auc", 0.51)]
    doc = _card()
    doc["sections"]["explanations"]["result"]["rows"][0]["deletion_auc"] = None  # constant maps: nothing to report
    assert faithfulness_metrics(doc) == []


def test_section_shows_the_auc_table_the_forms_and_the_sanity_verdicts(tmp_path):
    view = card_view(_card("plain"), card_sections())
    section = next(s for s in view.sections if s.anchor == "sec-explanations")
    tables = [b for b in section.blocks if b.kind == "table"]
    auc, forms, sanity = tables
    assert ["evidence", "full", "2x2", 0.11, 0.81] == auc.rows[0][:5] and auc.rows[0][9] == "yes"
    assert auc.rows[1][9] == "no"  # IG does not beat its random control here
    assert [r[0] for r in forms.rows] == ["full", "slimmed plain", "int8 (of slimmed)"]
    assert forms.rows[0][4:9] == [0.11, 0.81, 0.2, 0.31, 0.51] and forms.rows[0][10] == "pass"
    assert forms.rows[1][10] == "fail" and forms.rows[2][2] == "not evaluated"
    assert [r[-1] for r in sanity.rows] == ["pass", "fail", "fail", "fail"]
    notes = next(b for b in section.blocks if b.kind == "bullets").items
    assert "int8 (of slimmed): not evaluated: plain" in notes and "gradcam on full: no conv plain" in notes
    assert any("28.0 forward passes per image per method" in b.text for b in section.blocks if b.kind == "paragraph")


def test_every_name_in_the_section_is_escaped(tmp_path):
    page, text = render_html(_card(), tmp_path), render_markdown(_card())
    for rendered in (page, text):
        assert "<script>alert" not in rendered and "&lt;script&gt;alert" in rendered
    assert page.count("<script>") == 1


def test_section_shows_the_pointing_game_beside_the_random_control_where_masks_exist(tmp_path):
    doc = _card("plain")
    res = doc["sections"]["explanations"]["result"]
    res["localisation"] = {"object_share": 0.25}
    for row in res["rows"]:
        if row.get("status", "ok") == "ok":
            row["localisation"] = {"energy_pointing_game": 0.625, "energy_pointing_game_se": 0.05,
                                   "vs_random": {"difference": 0.375, "difference_se": 0.1}}
    text = render_markdown(doc)
    assert "objects' share of the image, 25.0 %" in text
    assert "pointing game ↑" in text and "Δ pointing game vs random" in text
    assert "0.625 ± 0.05" in text and "0.375 ± 0.1" in text
    assert "pointing game" not in render_markdown(_card("plain"))  # no masks, no columns
