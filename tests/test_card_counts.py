"""No contradiction between a card's sections: every count a section quotes equals the one it is derived from.

A real audit's card.json is read (a random-weight ResNet18 on shapes, most of its 45 classes without data), each
count is recomputed from the fields it derives from, and the rendered README is searched for every place that
quotes one.
"""

import json
import re

import pytest

from inspectnet.reports.card.fields import counted


@pytest.fixture(scope="module")
def card(shapes_audit):
    return json.loads((shapes_audit / "card.json").read_text()), (shapes_audit / "README.md").read_text()


def _result(doc, name):
    sec = doc["sections"][name]
    assert sec["status"] == "ok", sec.get("error")
    return sec["result"]


def test_per_class_counts_add_up_to_the_probed_samples(card):
    doc, _ = card
    probe = _result(doc, "probe")
    rows = probe["confusions"]
    assert sum(r["samples"] for r in rows) == probe["eval"]["samples"] == 32  # shapes are all labelled
    assert [r["class"] for r in rows] == probe["eval"]["classes_present"]
    assert sum(r["correct"] for r in rows) / probe["eval"]["samples"] == pytest.approx(probe["accuracy"])
    for r in rows:  # what the model gave instead never exceeds what it got wrong
        assert sum(x["count"] for x in r["instead"]) <= r["samples"] - r["correct"]
    # accuracy among the classes with data: never below the all-class accuracy (fewer classes to lose to)
    assert probe["accuracy_among_present"] >= probe["accuracy"]
    assert probe["sources"] is None  # generated images, not crops of shared photos


def test_decomposition_counts_equal_the_probe_and_its_own_rows(card):
    doc, _ = card
    probe, dec = _result(doc, "probe"), _result(doc, "decomposition")
    present = sorted(set(probe["train"]["classes_present"]) | set(probe["eval"]["classes_present"]))
    assert 1 < len(present) < probe["num_classes"] == dec["num_classes"] == 45
    assert [p["class"] for p in dec["per_class"]] == present
    assert dec["classes_with_data"] == len(present)
    fitted = set(probe["train"]["classes_present"])
    assert dec["num_classes"] - dec["dense_classes"] == len(fitted) == dec["among_fitted_classes"]["num_classes"]
    union = set().union(*(p["features"] for p in dec["per_class"]))
    assert dec["union_size"] == len(union)
    assert dec["features_used"] == dec["feature_dim"]  # the dense rows of the classes without data read them all
    assert dec["head_macs_decomposed"] == dec["dense_classes"] * dec["feature_dim"] + sum(
        len(p["features"]) for p in dec["per_class"] if p["class"] in fitted)
    # the among-classes sample count is the eval samples whose label was fitted
    assert dec["among_fitted_classes"]["samples"] == sum(r["samples"] for r in probe["confusions"] if r["class"] in fitted)


def test_every_stage_quotes_the_probed_sample_counts(card):
    doc, _ = card
    probe = _result(doc, "probe")
    n_train, n_eval = probe["train"]["samples"], probe["eval"]["samples"]
    lp, rules = _result(doc, "linear_probes"), _result(doc, "rules")
    assert (lp["n_train"], lp["n_eval"]) == (rules["n_train"], rules["n_eval"]) == (n_train, n_eval) == (64, 32)
    assert rules["atoms"] == len(rules["atom_filters"])
    assert rules["selection"]["n_fit"] + rules["selection"]["n_val"] == n_train
    if rules["rules"] <= len(rules["top_rules"]):  # every rule listed: their supports partition the data
        assert sum(t["support"] for t in rules["top_rules"]) == n_train
        assert sum(t["eval_support"] for t in rules["top_rules"]) == n_eval
    exp = _result(doc, "explanations")
    for row in exp["rows"]:
        assert row["images"] == exp["images"] == 2 and row["evaluated"] <= row["images"]
        if row.get("vs_random"):
            assert row["vs_random"]["paired_images"] == row["evaluated"]


def test_the_rendered_card_quotes_one_count_of_classes_with_data_everywhere(card):
    doc, readme = card
    probe, dec = _result(doc, "probe"), _result(doc, "decomposition")
    present = len(set(probe["train"]["classes_present"]) | set(probe["eval"]["classes_present"]))
    quoted = re.findall(r"(\d+) of the model's (\d+)", readme)
    assert len(quoted) >= 3  # Evaluation data, the decomposition section, the caveat
    fitted = dec["num_classes"] - dec["dense_classes"]
    assert {q for q in quoted} <= {(str(present), "45"), (str(fitted), "45")}
    assert f"among the {present} classes with data" in readme
    assert f"the other {dec['dense_classes']} classes have no data" in readme or fitted == present


def test_the_first_screen_quotes_the_numbers_the_sections_derive(card):
    doc, readme = card
    probe, dec = _result(doc, "probe"), _result(doc, "decomposition")
    first = readme.split("## At a glance", 1)[1].split("\n## ", 1)[0]
    n = probe["eval"]["samples"]
    assert f"| accuracy over all 45 classes | {counted(probe['accuracy'], n)} |" in first
    present = len(set(probe["train"]["classes_present"]) | set(probe["eval"]["classes_present"]))
    assert f"| accuracy among the {present} classes with data | {counted(probe['accuracy_among_present'], n)} |" in first
    assert f"{counted(dec['accuracy_decomposed'], n)} |" in first
    among = dec["among_fitted_classes"]
    assert f"decomposed classes | {counted(among['accuracy_decomposed'], among['samples'])} |" in first
    # every sample count the first screen quotes is the eval set's or the decomposed classes' share of it
    assert set(re.findall(r"\(n = ([\d,]+)\)", first)) <= {f"{n:,}", f"{among['samples']:,}"}
    # the default trust check ran: the first screen gives its verdict, on as many images as its section measured
    trust = doc["sections"]["trust"]["result"]
    assert f"Can its explanations be trusted? On {trust['images']} evaluation images," in first
