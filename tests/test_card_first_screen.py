"""The card's first screen and its generated caveats: hand-built cards with known facts, the probe stage's facts
computed by hand, and (slow) the quick-start card of the shipped Lite0 on the photo crops."""

import numpy as np
import pytest

from inspectnet.data import load_data
from inspectnet.data.labels import imagenet_names
from inspectnet.pipelines.audit.probe import _accuracy_among, _confusions, _shared_sources
from inspectnet.reports.card import caveats, data_caveats, summary_section, trust_text
from inspectnet.reports.card.view import front_matter_fields, headline

NAMES = imagenet_names()


def _doc(**sections):
    """A card of a 1000-class ImageNet model evaluated on 40 crops of 4 classes (tabby, missile, tripod, espresso)."""
    probe = {"train": {"data": "photos:train", "samples": 160, "available": 160, "limit": 512,
                       "classes_present": [281, 657, 872, 967]},
             "eval": {"data": "photos:test", "samples": 40, "available": 40, "limit": None, "in_sample": False,
                      "classes_present": [281, 657, 872, 967]},
             "num_classes": 1000, "accuracy": 0.6, "accuracy_among_present": 0.975,
             "sources": {"fit": 4, "eval": 4, "shared": 4, "names": ["camera", "chelsea", "coffee", "rocket"]},
             "confusions": [{"class": 281, "samples": 10, "correct": 0,
                             "instead": [{"class": 285, "count": 6, "kind": "cat"}, {"class": 282, "count": 4,
                                                                                     "kind": "cat"}]},
                            {"class": 657, "samples": 10, "correct": 6, "instead": [{"class": 517, "count": 4,
                                                                                     "kind": None}]}]}
    dec = {"k1": 5, "k2": 5, "accuracy_full": 0.6, "accuracy_decomposed": 0.0, "rA": 0.0, "union_size": 19,
           "feature_dim": 1280, "dense_classes": 996, "num_classes": 1000, "head_macs_full": 1280000,
           "head_macs_decomposed": 1274900, "among_fitted_classes": {"num_classes": 4, "samples": 40,
                                                                     "accuracy_full": 1.0, "accuracy_decomposed": 0.95,
                                                                     "rA": 0.95},
           "per_class": [{"class": 281, "features": [112, 241, 549, 66, 1156]}]}
    secs = {"probe": {"title": "Probe", "status": "ok", "result": probe},
            "decomposition": {"title": "Decomposition", "status": "ok", "result": dec}, **sections}
    return {"model": {"spec": "timm:efficientnet_lite0", "num_classes": 1000, "class_names": NAMES, "source": "timm"},
            "data": {"train": "photos:train", "eval": "photos:test", "limit": 512, "in_sample": False},
            "sections": secs}


def _texts(section):
    out = []
    for b in section.blocks:
        out += b.items if b.kind == "bullets" else [" ".join(map(str, sum(b.rows, [])))] if b.kind == "table" else \
            [getattr(b, "text", getattr(b, "caption", ""))]
    return "\n".join(out)


def test_first_screen_puts_the_accuracy_among_classes_with_data_beside_the_all_class_one():
    first = summary_section(_doc())
    table = next(b for b in first.blocks if b.kind == "table")
    assert [r[:2] for r in table.rows] == [["accuracy over all 1000 classes", "60.0 % (n = 40)"],
                                           ["accuracy among the 4 classes with data", "97.5 % (n = 40)"],
                                           ["decomposed head (k2 = 5), all 1000 classes", "0.0 % (n = 40)"],
                                           ["decomposed head among the 4 decomposed classes", "95.0 % (n = 40)"]]
    text = _texts(first)
    # the low all-class decomposed accuracy is explained right under the table that first shows it
    note = next(b.text for b in first.blocks if b.kind == "paragraph" and b.text.startswith("Why the decomposed"))
    assert "the other 996 classes have no data" in note and "95.0 % against the model's 100.0 %" in note
    assert first.blocks.index(table) + 1 == next(i for i, b in enumerate(first.blocks) if getattr(b, "text", "") == note)
    assert "19 of its 1280 penultimate features serve the 1 classes with data" in text
    assert "tabby: features 112, 241, 549, 66, 1156" in text


def test_first_screen_has_no_decomposition_note_when_all_class_accuracy_is_not_lower():
    doc = _doc()
    doc["sections"]["decomposition"]["result"]["accuracy_decomposed"] = 0.95
    assert "Why the decomposed" not in _texts(summary_section(doc))


def test_headline_and_metadata_name_both_decomposed_accuracies():
    rows = headline(_doc())
    labels = [r[0] for r in rows]
    i = labels.index("decomposed-head accuracy A_d (k1=5, k2=5), all 1000 classes")
    assert labels[i + 1] == "A_d among the 4 decomposed classes" and rows[i + 1][1] == "95.0 % (n = 40)"
    assert rows[i][4].startswith("low because the 996 classes without data keep dense rows")
    assert all(len(r) == 5 and r[2] and r[3] for r in rows)  # every number says what it was measured on and which way
    metrics = {name: value for _, name, value in front_matter_fields(_doc())["metrics"]}
    assert metrics["accuracy among the 4 classes with data"] == 0.975
    assert metrics["decomposed head accuracy among the 4 decomposed classes"] == 0.95
    assert metrics["decomposed head accuracy over all 1000 classes (996 without data keep dense rows)"] == 0.0


def test_caveats_are_generated_from_the_recorded_facts():
    found = data_caveats(_doc(linear_probes={"title": "Linear probes", "status": "ok", "result": {}}))
    assert found[0].startswith("The fitting and evaluation samples are crops of the same 4 photos (camera, chelsea, "
                               "coffee, rocket)")
    assert found[1].startswith("The data cover 4 of the model's 1000 classes") and "it is 97.5 %" in found[1]
    assert found[1].endswith("say nothing about the other 996.")
    # the missile → crane confusion shares no kind of object: only the cats are near-synonyms
    assert found[2].startswith("Near-synonym classes: the model names some samples by a neighbouring class of the "
                               "same kind of object (cat): tabby → Egyptian cat (6 of 10), tiger cat (4 of 10).")
    assert found[3].startswith("In-sample even with separate evaluation data: the linear probes' train accuracy")
    assert len(found) == 4
    assert caveats(_doc())[-1].startswith("Attributions and receptive fields show a handful of images")


def test_caveats_stay_silent_where_the_data_calls_for_none():
    doc = _doc()
    probe = doc["sections"]["probe"]["result"]
    probe.update(sources=None, num_classes=4, confusions=[])
    assert data_caveats(doc) == []
    doc["data"]["in_sample"] = True
    assert data_caveats(doc) == ["All numbers are in-sample (no --eval data): they overstate generalisation."]


def _explanations(beats, passes):
    row = {"form": "full", "status": "ok", "vs_random": {"beats_control": beats, "paired_images": 16}}
    return {"title": "Explanations", "status": "ok", "result": {
        "images": 16, "forms": [{"name": "full"}],
        "rows": [{**row, "method": "evidence"}, {**row, "method": "gradcam", "vs_random": {**row["vs_random"],
                                                                                         "beats_control": False}},
                 {"form": "full", "status": "ok", "method": "random"}],
        "sanity": {"full": {"methods": {"evidence": {"passes": passes}, "gradcam": {"passes": True},
                                        "random": {"passes": False}}}}}}


def test_trust_verdict_comes_from_the_trust_section_else_the_explanation_checks_else_says_not_measured():
    assert trust_text(_doc()).startswith("Not measured: this audit did not check its explanations")
    text = trust_text(_doc(explanations=_explanations(True, True)))
    assert text.startswith("On 16 images, 1 of 2 methods beat random maps on both deletion and insertion (evidence). "
                           "2 of 2 pass the sanity check")
    vs = {"beats_control": True, "paired_images": 16}
    trust = {"title": "Trust", "status": "ok", "result": {"images": 16, "methods": {
        "gradcam": {"vs_random": {**vs, "beats_control": False}}, "evidence": {"vs_random": vs}, "random": {}}}}
    doc = _doc(explanations=_explanations(False, True), trust=trust)
    assert trust_text(doc) == ("On 16 evaluation images, 1 of 2 methods beat random maps on both deletion and "
                               "insertion (class evidence). 2 of 2 pass the sanity check (their maps change when the "
                               "model is randomised): evidence, gradcam. Trust a map only from a method that does both.")
    del doc["sections"]["explanations"]
    assert trust_text(doc).endswith("(class evidence). Whether the maps change when the model is randomised (the "
                                    "sanity check) was not run: --explain-images N runs it.")
    doc["sections"]["trust"] = {"title": "Trust", "status": "failed", "error": "x"}
    assert trust_text(doc).startswith("The trust check failed")


class _Record:
    """The two arrays of a probe record the facts are computed from (labels and logits)."""

    def __init__(self, labels, logits):
        self.labels, self.logits = np.asarray(labels), np.asarray(logits, np.float32)
        self.predictions = self.logits.argmax(1)


def test_probe_facts_computed_by_hand():
    # 4 classes, data for 0 and 2 only; sample 3 is unlabelled
    logits = [[1, 5, 0, 0],   # label 0: all-class top-1 is 1 (wrong); among {0, 2}: 0 (right)
              [0, 0, 2, 9],   # label 2: top-1 3 (wrong); among {0, 2}: 2 (right)
              [3, 0, 1, 0],   # label 2: top-1 0 (wrong); among: 0 (wrong)
              [0, 0, 0, 1]]   # unlabelled
    rec = _Record([0, 2, 2, -1], logits)
    assert _accuracy_among(rec, [0, 2]) == pytest.approx(2 / 3)
    names = ["tabby", "tiger cat", "espresso", "Egyptian cat"]
    rows = _confusions(rec, names)
    assert rows == [{"class": 0, "samples": 1, "correct": 0, "instead": [{"class": 1, "count": 1, "kind": None}]},
                    {"class": 2, "samples": 2, "correct": 0, "instead": [{"class": 3, "count": 1, "kind": None},
                                                                         {"class": 0, "count": 1, "kind": None}]}]
    # with ImageNet's names the cats share a kind
    big = np.zeros((1, 1000), np.float32)
    big[0, 282] = 1
    assert _confusions(_Record([281], big), NAMES)[0]["instead"] == [{"class": 282, "count": 1, "kind": "cat"}]


def test_shared_photos_are_counted_from_the_crops():
    fit, ev = load_data("photos:train?n=40"), load_data("photos:test?n=40")
    assert _shared_sources(fit, ev) == {"fit": 4, "eval": 4, "shared": 4,
                                        "names": ["camera", "chelsea", "coffee", "rocket"]}
    assert _shared_sources(load_data("digits:train"), load_data("digits:test")) is None


@pytest.mark.slow
def test_quick_start_card_states_both_accuracies_and_what_the_photos_cannot_show(tmp_path, lite0_weights):
    from inspectnet.cli import main

    out = tmp_path / "audit"
    assert main(["audit", "shipped:efficientnet_lite0", "photos:train", "--eval", "photos:test", "--out", str(out),
                 "--images", "1", "--ig-steps", "2", "--top-units", "1"]) == 0
    readme = (out / "README.md").read_text()
    first = readme.split("## At a glance", 1)[1].split("\n## ", 1)[0]
    assert "| accuracy over all 1000 classes | 60.0 % (n = 40) |" in first
    assert "| accuracy among the 4 classes with data | 100.0 % (n = 40) |" in first
    assert "Why the decomposed head scores 0.0 % over all classes" in first
    assert "crops of the same 4 photos (camera, chelsea, coffee, rocket)" in first
    assert "tabby → Egyptian cat (6 of 10), tiger cat (4 of 10)" in first
    # the default trust stage measured it; the sanity check needs --explain-images
    assert "Can its explanations be trusted? On 16 evaluation images, " in first
    assert "(the sanity check) was not run: --explain-images N runs it." in first


def test_evaluation_data_says_how_many_files_came_from_sub_folders_of_their_class_folder():
    from inspectnet.reports.card.view import _data_text

    doc = _doc()
    assert "sub-folders" not in _data_text(doc)
    doc["sections"]["probe"]["result"]["nested"] = {"fit": 3, "eval": 1}
    assert _data_text(doc).endswith(" 3 fitting and 1 evaluation files lie in sub-folders of their class folder and "
                                    "count for that class (as in torchvision's ImageFolder).")
